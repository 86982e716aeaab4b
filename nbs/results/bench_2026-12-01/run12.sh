#!/bin/bash
# #12 measurements: resumable (a config whose JSON exists is skipped). new = /work/wt-bench (e0044e7), old = /work/wt-old (ff2330c)
. /work/venv/bin/activate
cd /work/bench/b12
run() {  # name tree isa args...
  name=$1; tree=$2; isa=$3; shift 3
  [ -s $name.json ] && { echo "skip $name"; return; }
  if [ $isa = avx2 ]; then export ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2; else unset ATEN_CPU_CAPABILITY ONEDNN_MAX_CPU_ISA; fi
  echo "$(date -u +%T) start $name: $*"
  PYTHONPATH=/work/wt-$tree python -c "from eln_nb.bench import bench_main; import sys; sys.exit(bench_main(sys.argv[1:]))" "$@" --json > $name.tmp 2> $name.err \
    && mv $name.tmp $name.json && echo "$(date -u +%T) done $name" || echo "$(date -u +%T) FAILED $name"
}
run avx2_new_fp32     bench avx2 --iters 5 --warmup 2
run avx2_old_fp32     old   avx2 --iters 5 --warmup 2
run amx_new_compile   bench amx  --iters 5 --warmup 3 --compile --no-floor --breakdown-iters 0
run amx_new_fp32      bench amx  --iters 5 --warmup 3 --no-floor --breakdown-iters 0
run amx_new_fp32_cl   bench amx  --iters 5 --warmup 2 --channels-last
echo "$(date -u +%T) all done"
