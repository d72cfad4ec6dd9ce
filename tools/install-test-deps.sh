#!/usr/bin/env bash
# System packages the test suite needs (idempotent): openssl for the TLS tool tests,
# Debian's chromium for the browser tests of the web administration page, and Debian's
# PostgreSQL for the PostgreSQL backend tests and the comparison benchmark, and iproute2
# (ip netns) for the LAN tests that cut links between network namespaces.
set -euo pipefail
need=()
command -v openssl >/dev/null || need+=(openssl)
command -v chromium >/dev/null || need+=(chromium)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v ip >/dev/null || need+=(iproute2)
if ((${#need[@]})); then
    if [ "$(id -u)" != 0 ]; then SUDO=sudo; else SUDO=; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
