#!/usr/bin/env bash
# pytest-mpi's own test suite, without hpcpar and with it: hpcpar's pytest plugin must
# leave pytest-mpi's behaviour as it is. Usage: bash tests/env/pytest-mpi-suite.sh [WORKDIR]
#
# Fetches the pytest-mpi sdist, makes two venvs with the same pytest, mpi4py and MPICH
# as .venv (one without hpcpar, one with this checkout installed), and runs the suite
# the way its tox.ini does (`pytest -p pytester --runpytest=subprocess`; its tests start
# `mpirun -n 2 pytest --with-mpi` themselves), serially and under `mpiexec -n 2` and `-n 3`.
# Exits non-zero when a run with hpcpar has a failure that the run without it has not.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=${1:-$(mktemp -d /tmp/pytest-mpi-suite.XXXXXX)}
PY=${PYTHON:-python3}
T=${SUITE_TIMEOUT:-600}
version() { "$ROOT/.venv/bin/python" -c "import importlib.metadata as m; print(m.version('$1'))"; }
pins=(pytest=="$(version pytest)" mpi4py=="$(version mpi4py)" mpich=="$(version mpich)" py sybil)
mkdir -p "$WORK" && cd "$WORK"
timeout "$T" "$PY" -m pip download -q --no-binary :all: --no-deps "pytest-mpi==$(version pytest-mpi)" -d sdist
tar xzf sdist/pytest-mpi-*.tar.gz && src=$(ls -d "$WORK"/pytest-mpi-*/)
for leg in plain hpcpar; do
  [ -x "venv-$leg/bin/python" ] || {
    "$PY" -m venv "venv-$leg"
    timeout "$T" "venv-$leg/bin/pip" install -q "${pins[@]}" "$src"
    if [ "$leg" = hpcpar ]; then timeout "$T" "venv-$leg/bin/pip" install -q -e "$ROOT"; fi
  }
done
status=0
for leg in plain hpcpar; do
  for mode in serial mpi2 mpi3; do
    rm -rf "run-$leg-$mode" && cp -r "$src" "run-$leg-$mode" && cd "run-$leg-$mode"
    cmd=("$WORK/venv-$leg/bin/python" -m pytest -p pytester -p no:cacheprovider --runpytest=subprocess -q -rf)
    [ "$mode" != serial ] && cmd=("$WORK/venv-$leg/bin/mpiexec" -n "${mode#mpi}" "${cmd[@]}" --with-mpi)
    PATH="$WORK/venv-$leg/bin:$PATH" timeout "$T" "${cmd[@]}" > "../$leg-$mode.log" 2>&1 || true
    cd "$WORK"
    # the failing tests, once (under mpiexec every rank prints the summary)
    grep -E '^FAILED|^ERROR' "$leg-$mode.log" | sed 's/ - .*//' | sort -u > "$leg-$mode.failed" || true
    echo "$leg $mode: $(grep -E '^[0-9]+ (passed|failed)|^=+ .*(passed|failed)' "$leg-$mode.log" | tail -1)"
  done
done
for mode in serial mpi2 mpi3; do
  new=$(comm -13 "plain-$mode.failed" "hpcpar-$mode.failed")
  if [ -n "$new" ]; then
    echo "with hpcpar only ($mode): $new"; status=1
  fi
done
[ $status = 0 ] && echo "pytest-mpi's suite: no failure with hpcpar that it does not have without (logs in $WORK)"
exit $status
