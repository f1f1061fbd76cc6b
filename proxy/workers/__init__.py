"""`serving-sidecar run --workers N`: N processes serve the HTTP front, one process holds the credentials.

With N = 1 (the default) none of this runs: one process, as before. With N > 1 the process started by
`run` (the parent) keeps everything that must not be multiplied, and N worker processes do the HTTP
data path, each a complete single-process forwarder (its own event loop, pools and in-flight bounds):

- parent: tokens (refreshed ahead), endpoint resolution, the listening socket, the gRPC front, the admin
  listener (probes, /metrics, POST /quitquitquit), the drain; `supervisor.Workers` is its HTTP listener.
- worker (`worker`): HTTP connections the parent hands it; forwards them with the parent's tokens and
  resolutions, kept in memory (`mirror`), so the data path's look-ups stay synchronous.

How connections reach workers (`handoff`). The parent accepts every connection and passes its
descriptor to the next serving worker, round robin, over a Unix SOCK_SEQPACKET socketpair (SCM_RIGHTS).
The alternatives, and why not:
- SO_REUSEPORT, each worker binding the port: the kernel hashes each new connection to a socket, so a
  caller's few long-lived keep-alive connections (the usual client of a sidecar) often pile onto one
  worker (8 connections on 2 workers all land on one about 1 time in 128); the connections waiting in
  a worker's accept queue are reset when it dies; port 0 and the "address in use" check need a parent
  bind anyway; any process of the same user can join the group and take a share of the traffic; and it
  cannot share a Unix socket (`--http-listen unix:PATH`: a second bind of the path fails).
- one listening socket inherited by all workers, each accepting: no kernel balance at all; whichever
  worker wakes first takes a whole burst (libuv accepts until EAGAIN), so the same pile-up, decided by
  scheduling.
Handing descriptors over costs the parent one accept and one sendmsg per new connection (a few tens of
microseconds, nothing per request on a kept-alive connection), in exchange for: an even spread; nothing
lost while a worker restarts (connections wait in the kernel's backlog until one serves); a bind that
fails once, in the parent, as with one process; and the same code for a Unix socket, since descriptor
passing does not care about the address family.

One authority (`authority`, `mirror`, over `channel`). The parent runs the one `Credentials` and
`Resolver`. It sends every token it obtains (refreshes and re-mints included) and every change of a
resolution to all workers over a socketpair carrying length-prefixed JSON; a worker asks it only for
what it lacks (a new name, a token after a 401), and the parent single-flights those asks, so token
grants and metadata reads do not grow with N, and a 401 seen by one worker re-mints once for all.
Tokens travel only over these anonymous socketpairs between the sidecar's own processes. Workers never
see the client secret: their settings come without it and their environment has no `DATABRICKS_*`.

One set of metrics (`proxy.metrics`). Each worker keeps its own registry and sends the parent a
snapshot every second and before it exits; /metrics adds the latest ones to the parent's own (so a
worker's figures are at most a second old, and a scrape never waits on a worker), with the names and
labels of one process. Counters and histograms are totals over all processes, exited ones
included (at most a second of a crashed worker's counts can be lost); `in_flight_requests` and
`upstream_connections` are sums over the processes; token, resolution, readiness and build figures come
from the parent. prometheus_client's multiprocess mode was not used: it drops custom collectors (the
pool gauges) and gauge functions (in-flight), and needs a directory of mmap files that grows with
every restarted pid and must be cleaned up.

Processes (`process`). Workers are fresh interpreters started with posix_spawn (`python -m
proxy.workers`), never forked: by the time one is restarted the parent runs uvloop and gRPC's threads,
which do not survive a fork. Linux only (descriptor passing over SOCK_SEQPACKET, pidfds).

Lifecycle. Readiness is 200 only while every worker serves. A worker that exits unasked is logged and
replaced; 5 exits within 60 s make the sidecar unready and hold restarts back (`restarts`), so it never
spins. SIGTERM, SIGINT and POST /quitquitquit drain all: readiness 503 at once, new connections for
`drain_delay` s, then the parent stops accepting and each worker drains as one process does, cut at
`drain_timeout`. Workers exit when the parent goes, so none outlives it.
"""
