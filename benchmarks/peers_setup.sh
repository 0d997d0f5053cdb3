#!/usr/bin/env bash
# Create the peer venvs for `python -m benchmarks.peers` (not part of CI).
#
#   bash benchmarks/peers_setup.sh            # both peers
#   bash benchmarks/peers_setup.sh deepctr    # one of them: deepctr | rechub
#
# The venvs are benchmarks/.venv-deepctr and benchmarks/.venv-rechub (git-ignored).
# Each peer gets its own venv with the SAME torch as the project (torch==2.13.0, the local CPU
# wheel), installed first so that the peer's own requirements cannot move it; pip's constraint
# files are left as they are. A peer that fails to install is reported and skipped; the script
# exits non-zero only if every requested peer failed.
set -u
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
LOG_DIR="benchmarks/results"
mkdir -p "$LOG_DIR"

# Inside benchmarks/ and ignored by benchmarks/.gitignore: never commit a venv.
declare -A VENV=([deepctr]="benchmarks/.venv-deepctr" [rechub]="benchmarks/.venv-rechub")
# deepctr-torch 0.3.0 imports requests without declaring it (it asks PyPI for a newer version at
# import; benchmarks/peers.py stubs that call out).
declare -A PKG=([deepctr]="deepctr-torch==0.3.0 requests" [rechub]="torch-rechub==0.9.0")
declare -A MOD=([deepctr]="deepctr_torch.models" [rechub]="torch_rechub.models.multi_task")

peers=("$@")
[ ${#peers[@]} -eq 0 ] && peers=(deepctr rechub)
ok=0
for peer in "${peers[@]}"; do
  venv="${VENV[$peer]:-}"
  if [ -z "$venv" ]; then echo "unknown peer '$peer' (deepctr | rechub)" >&2; continue; fi
  log="$LOG_DIR/peers_setup_${peer}.log"
  echo "== $peer: $venv (log: $log)"
  (
    set -e
    [ -x "$venv/bin/python" ] || "$PYTHON" -m venv "$venv"
    "$venv/bin/python" -m pip install -q "$TORCH_SPEC"
    # pyarrow: the peers' benchmark reads the same Parquet file as benchmarks.fit.
    # shellcheck disable=SC2086  # PKG holds several requirements
    "$venv/bin/python" -m pip install -q ${PKG[$peer]} pyarrow scikit-learn pandas
    # The peer must not have replaced torch.
    "$venv/bin/python" - "$TORCH_SPEC" "${MOD[$peer]}" <<'PY'
import importlib, sys, types
import torch
# deepctr-torch asks PyPI for its latest version in a thread at import: no network call here.
stub = types.ModuleType("requests")
stub.codes = types.SimpleNamespace(ok=200)
stub.get = lambda *a, **k: types.SimpleNamespace(status_code=0, text="")
sys.modules["requests"] = stub
want = sys.argv[1].split("==")[1]
assert torch.__version__.split("+")[0] == want, f"torch {torch.__version__} != {want}"
importlib.import_module(sys.argv[2])
print("torch", torch.__version__, "and", sys.argv[2], "import fine")
PY
  ) >"$log" 2>&1
  if [ $? -eq 0 ]; then
    ok=$((ok + 1)); tail -n 1 "$log"; echo "== $peer: ready"
  else
    echo "== $peer: FAILED; last lines of $log:" >&2; tail -n 15 "$log" >&2
  fi
done
[ "$ok" -gt 0 ]
