#!/usr/bin/env bash
# Create the contender venvs for `python -m benchmarks.peers` (not part of CI).
#
#   bash benchmarks/peers_setup.sh                # every contender
#   bash benchmarks/peers_setup.sh fuxi ref       # some of them: deepctr | rechub | fuxi | ref
#
# The venvs are benchmarks/.venv-{deepctr,rechub,fuxi,ref} (git-ignored):
#   deepctr  DeepCTR-Torch 0.3.0 (+ requests, an import it does not declare)
#   rechub   torch-rechub 0.9.0
#   fuxi     FuxiCTR 2.3.10 (its model-zoo PLE file comes with the peer harness, $PEERS_HOME)
#   ref      the plain-PyTorch PLE yardstick of the harness (torch, numpy, scikit-learn)
# Each gets the SAME torch as the project (torch==2.13.0, the local CPU wheel), installed first so
# that the contender's own requirements cannot move it; pip's constraint files are left as they
# are. A contender that fails to install is reported and skipped; the script exits non-zero only
# if every requested one failed. The venvs are reused: delete one to rebuild it.
set -u
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
PEERS_HOME="${PEERS_HOME:-../shared/peers}"
LOG_DIR="benchmarks/results"
mkdir -p "$LOG_DIR"

# Inside benchmarks/ and ignored by benchmarks/.gitignore: never commit a venv.
declare -A PKG=(
  [deepctr]="deepctr-torch==0.3.0 requests pandas scikit-learn"
  [rechub]="torch-rechub==0.9.0 pandas scikit-learn"
  [fuxi]="fuxictr==2.3.10"
  [ref]="numpy scikit-learn"
)
# What must import afterwards (deepctr-torch's PyPI version check is stubbed below).
declare -A MOD=(
  [deepctr]="deepctr_torch.models"
  [rechub]="torch_rechub.models.multi_task"
  [fuxi]="fuxictr.pytorch.dataloaders.npz_dataloader"
  [ref]="sklearn.metrics"
)

[ -f "$PEERS_HOME/README.md" ] ||
  echo "note: peer harness not found at $PEERS_HOME (set PEERS_HOME); benchmarks.peers needs it" >&2

peers=("$@")
[ ${#peers[@]} -eq 0 ] && peers=(deepctr rechub fuxi ref)
ok=0
for peer in "${peers[@]}"; do
  if [ -z "${PKG[$peer]:-}" ]; then echo "unknown contender '$peer' (deepctr | rechub | fuxi | ref)" >&2; continue; fi
  venv="benchmarks/.venv-$peer"
  log="$LOG_DIR/peers_setup_${peer}.log"
  echo "== $peer: $venv (log: $log)"
  (
    set -e
    [ -x "$venv/bin/python" ] || "$PYTHON" -m venv "$venv"
    "$venv/bin/python" -m pip install -q "$TORCH_SPEC"
    # shellcheck disable=SC2086  # PKG holds several requirements
    "$venv/bin/python" -m pip install -q ${PKG[$peer]}
    # The contender must not have replaced torch.
    "$venv/bin/python" - "$TORCH_SPEC" "${MOD[$peer]}" <<'PY'
import importlib, sys, types
import torch
# deepctr-torch asks PyPI for its latest version in a thread at import: no network call here.
stub = types.ModuleType("deepctr_torch.utils")
stub.check_version = lambda version: None
sys.modules["deepctr_torch.utils"] = stub
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
