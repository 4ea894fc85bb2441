# Shared by bench/gpu_check.sh and bench/gpu_train_check.sh (sourced; they set OUTDIR, PY and DRY first):
# the wheels carried in .whl/ installed with pip --no-index into /tmp/site (not in a dry run), and step(), which
# runs one step under its time limit with its log in OUTDIR/NAME.log and a line in OUTDIR/steps.jsonl.

if compgen -G ".whl/*.whl" >/dev/null && [[ $DRY == 0 ]]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        >"$OUTDIR/env.txt" 2>&1 || { echo "wheel install failed" >>"$OUTDIR/env.txt"; exit 2; }
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

FAILED=0
step() {  # step NAME LIMIT_S COMMAND...: output to OUTDIR/NAME.log, a line to steps.jsonl
    local name=$1 limit=$2 start rc ms
    shift 2
    start=$(date +%s%N)
    timeout --kill-after=10 "$limit" "$@" >"$OUTDIR/$name.log" 2>&1
    rc=$?
    ms=$((($(date +%s%N) - start) / 1000000))
    printf '{"step": "%s", "rc": %d, "seconds": %d.%03d, "limit_s": %s}\n' "$name" "$rc" $((ms / 1000)) $((ms % 1000)) "$limit" \
        >>"$OUTDIR/steps.jsonl"
    [[ $rc == 0 ]] || FAILED=1
}
