#!/usr/bin/env bash
# A certificate for the serving-sidecar injector without cert-manager: a private CA (its key is deleted
# once it has signed) and a serving certificate for serving-sidecar-injector.<namespace>.svc, both valid
# for 825 days. Needs openssl; --apply also needs kubectl (current context) and the injector applied
# (kubectl apply -k deploy/kubernetes/injector/base).
#
#   make-certificate.sh [--namespace NS] [--out DIR] [--apply]
#
# Writes ca.crt, tls.crt and tls.key into DIR (default: a new temporary directory). With --apply it then
# creates or replaces the Secret serving-sidecar-injector-tls in NS and sets the webhook configuration's
# caBundle to ca.crt. Run it again (with --apply) before the certificate expires: the injector re-reads
# the renewed Secret by itself.
set -euo pipefail

namespace=serving-sidecar
out=""
apply=false
while [ $# -gt 0 ]; do
  case "$1" in
    --namespace) namespace="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --apply) apply=true; shift ;;
    *) echo "usage: $0 [--namespace NS] [--out DIR] [--apply]" >&2; exit 2 ;;
  esac
done

service=serving-sidecar-injector
host="$service.$namespace.svc"
umask 077
dir="${out:-$(mktemp -d)}"
mkdir -p "$dir"

openssl req -x509 -new -nodes -days 825 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
  -keyout "$dir/ca.key" -out "$dir/ca.crt" -subj "/CN=$service CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
  -keyout "$dir/tls.key" -out "$dir/tls.csr" -subj "/CN=$host" 2>/dev/null
printf '%s\n' \
  "subjectAltName=DNS:$host,DNS:$host.cluster.local" \
  "basicConstraints=critical,CA:FALSE" \
  "keyUsage=critical,digitalSignature" \
  "extendedKeyUsage=serverAuth" \
  "subjectKeyIdentifier=hash" \
  "authorityKeyIdentifier=keyid" > "$dir/tls.ext"
openssl x509 -req -days 825 -in "$dir/tls.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial \
  -extfile "$dir/tls.ext" -out "$dir/tls.crt" 2>/dev/null
rm -f "$dir/ca.key" "$dir/ca.srl" "$dir/tls.csr" "$dir/tls.ext"
chmod 0644 "$dir/ca.crt" "$dir/tls.crt"
echo "wrote $dir/ca.crt, $dir/tls.crt and $dir/tls.key for $host"

if [ "$apply" = true ]; then
  kubectl -n "$namespace" create secret tls "$service-tls" --cert="$dir/tls.crt" --key="$dir/tls.key" \
    --dry-run=client -o yaml | kubectl apply -f -
  ca_bundle="$(base64 < "$dir/ca.crt" | tr -d '\n')"
  kubectl patch mutatingwebhookconfiguration "$service" --type=json \
    -p "[{\"op\": \"add\", \"path\": \"/webhooks/0/clientConfig/caBundle\", \"value\": \"$ca_bundle\"}]"
  echo "applied: Secret $namespace/$service-tls and the caBundle of MutatingWebhookConfiguration $service"
fi
