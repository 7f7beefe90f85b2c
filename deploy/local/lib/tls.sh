# shellcheck shell=bash
# The stack's own certificate authority, for Kafka's SSL listeners and the engine's
# HTTPS: generated once with openssl under <stack dir>/tls, loopback names only.
# Sourced by deploy/local/stack.sh, never run.

tls_dir() { printf '%s/tls' "$STACK_DIR"; }

# ensure_ca: the CA key and certificate (ca.pem is what clients trust).
ensure_ca() {
  local dir
  dir=$(tls_dir)
  [ -s "$dir/ca.pem" ] && [ -s "$dir/ca.key" ] && return 0
  command -v openssl >/dev/null 2>&1 || die "openssl not found: install openssl (it makes the stack's TLS certificates)"
  mkdir -p "$dir"
  say "generating the stack's certificate authority in $dir"
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=citypop local stack CA" \
    -keyout "$dir/ca.key" -out "$dir/ca.pem" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
    >/dev/null 2>&1 || die "openssl could not create the CA in $dir"
}

# ensure_cert NAME: <name>.key (unencrypted PKCS#8) and <name>.pem, signed by the
# CA, valid for 127.0.0.1 and localhost: the only names the stack listens on.
ensure_cert() {
  local name=$1 dir
  dir=$(tls_dir)
  ensure_ca
  [ -s "$dir/$name.pem" ] && [ -s "$dir/$name.key" ] && return 0
  openssl req -newkey rsa:2048 -nodes -subj "/CN=$name" -keyout "$dir/$name.key" \
    -out "$dir/$name.csr" >/dev/null 2>&1 || die "openssl could not create the key of $name"
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n' >"$dir/$name.ext"
  openssl x509 -req -in "$dir/$name.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial \
    -days 3650 -extfile "$dir/$name.ext" -out "$dir/$name.pem" >/dev/null 2>&1 ||
    die "openssl could not sign the certificate of $name"
  rm -f "$dir/$name.csr" "$dir/$name.ext"
}
