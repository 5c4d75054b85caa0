#!/usr/bin/env bash
# One device-machine session: build, GPU tests, dptrain vs PyTorch benchmarks (GPU and CPU), all
# logged under $OUT (or /tmp/out). Usage: bench/device_run.sh STEP... (the steps are the case
# labels below). Run folders live under /tmp/dr and are removed first: a warm machine keeps /tmp.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
B=build-dev
rm -rf /tmp/dr; mkdir -p /tmp/dr
# bench_rate LOG CMD...: runs a `dptrain bench` command, appends its JSON to $OUT/LOG, prints ms/step and images/s.
bench_rate() {
  local log=$1; shift
  "$@" | tee -a "$OUT/$log" |
    python3 -c "import json,sys; r=json.loads(sys.stdin.read()); print(r['ms_per_step'], r['images_per_second'])"
}
# fast_walls: mnist_fast's whole-process wall time, 3 runs, each in a fresh run folder (a finished
# run's folder would end the run at once).
fast_walls() {
  for i in 1 2 3; do
    /usr/bin/time -f "%e" -o /tmp/dr/wall $B/dptrain train --config configs/mnist_fast.yaml --device cuda --out /tmp/dr/tta_time_$i --no-progress > /tmp/dr/tta_time_$i.log 2>&1
    echo "mnist_fast wall: rc=$? $(cat /tmp/dr/wall) s; $(grep -E '^done' /tmp/dr/tta_time_$i.log | cut -c1-60)"
  done
}
# memcheck_bench LOG SECONDS ARGS...: `dptrain bench ARGS` under memcheck, planning over every candidate
# (DPTRAIN_PLAN_TIMING=quick) then 20 graph steps, logged to $OUT/LOG; prints the summary and the first faults.
memcheck_bench() {
  local log=$1 seconds=$2; shift 2
  DPTRAIN_PLAN_TIMING=quick timeout "$seconds" compute-sanitizer --tool memcheck --print-limit 5 $B/dptrain bench \
    --device cuda --steps 20 --warmup 2 "$@" > "$OUT/$log" 2>&1
  echo "memcheck $* rc=$?: $(grep -E 'ERROR SUMMARY' "$OUT/$log")"; grep -m3 -E "Invalid|Address|at 0x" "$OUT/$log"
}
# basebuild_start / basebuild_wait: the base builds (the `basebuild` step) beside a call's other steps.
basebuild_start() { bash "$0" basebuild > "$OUT/basebuild.out" 2>&1 & basebuild_pid=$!; }
basebuild_wait() { wait "$basebuild_pid"; cat "$OUT/basebuild.out"; }
for step in "$@"; do
  case $step in
    verify)  # one call at a commit: build, every GPU test, the e2e/MPI GPU tests, cuBLAS's load A/B, the long loss sweep, A/B against
      # each carry/*.tar.gz base, mnist_fast (10 seeds; 3 beside PyTorch), the default 14-epoch run, mnist_fast's profile and module loading
      # (about 7 minutes with a fresh machine's build; the base builds run beside the GPU tests)
      BUILD_TARGETS="dptrain dptrain_gpu_tests dptrain_e2e_tests dptrain_mpi_tests" bash "$0" build
      basebuild_start
      bash "$0" test gpue2e loadab
      DPTRAIN_SWEEP=long timeout 60 $B/tests/dptrain_gpu_tests --gtest_filter='ShapeSweep.Loss' > "$OUT/longloss.log" 2>&1
      echo "long loss sweep rc=$?"; grep -E "^sweep loss: [0-9]|Failure" "$OUT/longloss.log"
      basebuild_wait
      bash "$0" ab
      timeout 150 bash "$0" ttaquick
      bash "$0" run14
      timeout 60 bash "$0" ttaprofile ;;
    accept)  # issue 22's acceptance in one call, as the ninth session's call 4 ran it (about 6 minutes on a fresh machine):
      # every GPU test, the e2e/MPI GPU tests, start-up and the whole run, the timed resume, cold and warm start, and
      # the step A/B against each carry/*.tar.gz base (built beside the rest)
      basebuild_start
      BUILD_TARGETS="dptrain dptrain_gpu_tests dptrain_e2e_tests dptrain_mpi_tests" bash "$0" build || exit 1
      bash "$0" test gpue2e breakdown resumetimed coldwarm
      basebuild_wait
      bash "$0" abplan ;;
    verifycore)  # the GPU-correctness part of verify, for a call with little device time: build, every GPU test, the
      # e2e/MPI GPU tests, cuBLAS's load A/B, the default 14-epoch run, mnist_fast's profile, module loading and warm wall times (about 5 minutes)
      BUILD_TARGETS="dptrain dptrain_gpu_tests dptrain_e2e_tests dptrain_mpi_tests" bash "$0" build
      bash "$0" test gpue2e loadab run14
      timeout 60 bash "$0" ttaprofile
      fast_walls ;;
    gpuonly)  # the least a call at a commit must do: build dptrain and the GPU test binary, run every GPU test (about 4
      # minutes on a fresh machine: the build took 115 s on 2026-12-06)
      BUILD_TARGETS="dptrain dptrain_gpu_tests" bash "$0" build test ;;
    run14)  # the default 14-epoch run, whole process
      /usr/bin/time -f "%e" -o /tmp/dr/wall14 $B/dptrain train --device cuda --no-progress --out /tmp/dr/run14 > "$OUT/run14.log" 2>&1
      echo "default 14 epochs rc=$? wall $(cat /tmp/dr/wall14) s: $(grep ^done "$OUT/run14.log" | cut -c1-70)" ;;
    build)
      nvidia-smi -L; ls -d /usr/lib/x86_64-linux-gnu/openblas* 2>&1
      bash launch/get_mnist.sh data/mnist > /dev/null  # the raw files beside the carried .gz ones, as setup makes them
      cmake -S . -B $B -DCMAKE_CUDA_ARCHITECTURES=90 -DDPTRAIN_TEST_DATA_DIR="$PWD/data/mnist" -DDPTRAIN_BUILD_BENCHMARKS=ON >"$OUT/cmake.log" 2>&1 || { tail -30 "$OUT/cmake.log"; exit 1; }
      cmake --build $B -j 16 ${BUILD_TARGETS:+--target $BUILD_TARGETS} >"$OUT/build.log" 2>&1 || { grep -E "error" "$OUT/build.log" | head -30; exit 1; }
      grep -E "warning" "$OUT/build.log" | head -5; echo "build ok" ;;
    basebuild)  # each carry/<name>.tar.gz (git archive of an earlier commit), dptrain only, into /tmp/bases/<name>
      rm -rf /tmp/bases; mkdir -p /tmp/bases
      for t in carry/*.tar.gz; do
        name=$(basename "$t" .tar.gz); d=/tmp/bases/$name; mkdir -p $d; tar -xzf "$t" -C $d
        ( (cmake -S $d -B $d/b -DCMAKE_CUDA_ARCHITECTURES=90 && cmake --build $d/b -j 16 --target dptrain) \
          >"$OUT/basebuild_$name.log" 2>&1 && echo "base $name build ok" || tail -20 "$OUT/basebuild_$name.log" ) &
      done; wait ;;
    ab)  # this tree against each base build, interleaved, same machine; ms/step and images/s
      for round in 1 2; do for t in float32 tf32; do for b in $B /tmp/bases/*/b; do
        echo -n "$b $t: "; bench_rate ab.jsonl $b/dptrain bench --device cuda --steps 400 --set train.precision=$t
      done; done; done ;;
    abcases)  # this tree against each base build at chosen shapes ($ABCASES: config:precision:batch ...), interleaved, 2 rounds
      for round in 1 2; do for c in ${ABCASES:-lenet5:float32:257 lenet5:float32:1000}; do for b in $B /tmp/bases/*/b; do
        IFS=: read -r cfg prec batch <<< "$c"; s=$(( batch >= 2048 ? 100 : 300 ))
        echo -n "$b $cfg $prec $batch: "
        bench_rate abcases.jsonl $b/dptrain bench --config configs/$cfg.yaml --device cuda --steps $s --warmup 5 \
          --batch-size $batch --set train.precision=$prec
      done; done; done ;;
    envab)  # this tree under each setting of $ENVAB (space-separated VAR=value), interleaved, same machine
      for round in 1 2; do for t in float32 tf32; do for e in $ENVAB; do
        echo -n "$e $t: "; bench_rate envab.jsonl env "$e" $B/dptrain bench --device cuda --steps 400 --set train.precision=$t
      done; done; done ;;
    loadab)  # exec to the first step (warm plan cache) with cuBLAS loaded beside the CUDA context (as built) and with it
      # mapped before main (LD_PRELOAD: what linking it did before 9225c65), interleaved, 4 rounds each
      blas=$(ls /usr/local/cuda/lib64/libcublas.so.1[0-9] /usr/local/cuda/lib/libcublas.so.1[0-9] 2>/dev/null | head -1)
      $B/dptrain train --device cuda --max-steps 1 --no-progress --out /tmp/dr/loadab_warm > /dev/null 2>&1
      for round in 1 2 3 4; do for mode in loaded preloaded; do
        pre=""; [ $mode = preloaded ] && pre="$blas"
        LD_PRELOAD=$pre $B/dptrain train --device cuda --max-steps 1 --no-progress --out /tmp/dr/loadab_${mode}_$round > /dev/null 2>&1
        echo -n "cuBLAS $mode, round $round: rc=$? "
        head -1 /tmp/dr/loadab_${mode}_$round/metrics.jsonl | python3 -c "import json,sys; s=json.loads(sys.stdin.read())['startup']; \
          print('exec to first step %.3f s:' % s['total_s'], ', '.join('%s %.0f' % (k, 1000 * s['phases'][k]) for k in s['order']), \
          '| overlapped', ', '.join('%s %.0f' % kv for kv in ((k, 1000 * v) for k, v in s.get('overlapped', {}).items())))" | tee -a "$OUT/loadab.txt"
      done; done ;;
    startup)  # wall time of a 20-step training run (planning, data, evaluation at the end): this tree and each base, interleaved
      for round in 1 2; do for b in $B /tmp/bases/*/b; do
        d=$(mktemp -d /tmp/dr/startup.XXXX); rmdir "$d"
        /usr/bin/time -f "%e" -o /tmp/dr/wall $b/dptrain train --device cuda --max-steps 20 --no-progress --out "$d" >"$d.log" 2>&1
        echo "$b round $round: rc=$? $(cat /tmp/dr/wall) s wall; $(grep -c "" "$d.log") log lines"
      done; done ;;
    breakdown)  # issue 22's start-up figures: exec to first step (the breakdown), the default 14-epoch run and
      # `dptrain eval`, each whole process under /usr/bin/time; breakdowns to $OUT/breakdown_*.json
      for round in 1 2; do  # round 1 starts cold (no plan cache yet, if there is one), round 2 warm
        /usr/bin/time -f "%e" -o /tmp/dr/wall $B/dptrain train --device cuda --max-steps 1 --no-progress --profile \
          --out /tmp/dr/bd1_$round > "$OUT/breakdown_step_$round.log" 2>&1
        echo "max-steps 1, round $round: rc=$? $(cat /tmp/dr/wall) s wall"
        head -1 /tmp/dr/bd1_$round/metrics.jsonl | python3 -c "import json,sys; s=json.loads(sys.stdin.read())['startup']; \
          print('  exec to first step %.3f s:' % s['total_s'], ', '.join('%s %.0f ms' % (k, 1000 * s['phases'][k]) for k in s['order']), \
          '| overlapped', ', '.join('%s %.0f ms' % (k, 1000 * v) for k, v in s.get('overlapped', {}).items()))" \
          | tee -a "$OUT/breakdown.txt"
        head -1 /tmp/dr/bd1_$round/metrics.jsonl > "$OUT/breakdown_step_$round.json"
        sed -n "/^start-up/,\$p" "$OUT/breakdown_step_$round.log"
        /usr/bin/time -f "%e" -o /tmp/dr/wall $B/dptrain train --device cuda --no-progress --out /tmp/dr/bd14_$round \
          > "$OUT/breakdown_14_$round.log" 2>&1
        echo "default 14 epochs, round $round: rc=$? $(cat /tmp/dr/wall) s wall; $(grep -E '^done' "$OUT/breakdown_14_$round.log")"
        head -1 /tmp/dr/bd14_$round/metrics.jsonl > "$OUT/breakdown_14_$round.json"
        /usr/bin/time -f "%e" -o /tmp/dr/wall $B/dptrain eval --device cuda --checkpoint /tmp/dr/bd14_$round/final.safetensors \
          --json > "$OUT/breakdown_eval_$round.json" 2>"$OUT/breakdown_eval_$round.err"
        echo "eval, round $round: rc=$? $(cat /tmp/dr/wall) s wall"
        $B/dptrain eval --device cuda --checkpoint /tmp/dr/bd14_$round/final.safetensors --profile | sed -n "/^start-up/,\$p"
      done
      # The epoch ends of the 14-epoch run under --profile: evaluation, metrics line, checkpoint snapshot and write.
      $B/dptrain train --device cuda --no-progress --profile --out /tmp/dr/bdprof > "$OUT/breakdown_profile.log" 2>&1
      echo "profile rc=$?"; sed -n "/^epoch ends/,\$p" "$OUT/breakdown_profile.log" ;;
    test)  # every GPU test: the failures in full, then the counts
      timeout 400 $B/tests/dptrain_gpu_tests --gtest_filter="${GPU_FILTER:-*}" > "$OUT/gpu_tests.log" 2>&1; echo "gpu tests rc=$?"
      grep -E -A12 "Failure$" "$OUT/gpu_tests.log" | head -120
      grep -E "^\[  (FAILED|PASSED|SKIPPED) |tests ran|Segmentation|error:" "$OUT/gpu_tests.log" | head -40 ;;
    gpue2e)  # the end-to-end and MPI tests that need a GPU (one GPU: two ranks share it through --comm mpi)
      timeout 300 $B/tests/e2e/dptrain_e2e_tests --gtest_filter='*Gpu*' > "$OUT/gpu_e2e.log" 2>&1; echo "e2e gpu rc=$?"
      grep -E -A12 "Failure$" "$OUT/gpu_e2e.log" | head -60; grep -E "^\[  (FAILED|PASSED|SKIPPED) |tests ran" "$OUT/gpu_e2e.log"
      for np in 1 2; do
        timeout 200 mpirun -np $np --oversubscribe $B/tests/mpi/dptrain_mpi_tests --gtest_filter='MpiCommGpu.*' > "$OUT/gpu_mpi_np$np.log" 2>&1
        echo "mpi gpu np$np rc=$?"; grep -E -A8 "Failure$" "$OUT/gpu_mpi_np$np.log" | head -30; grep -E "^\[  (FAILED|PASSED) |SKIPPED \]" "$OUT/gpu_mpi_np$np.log" | sort | uniq -c
      done ;;
    ctest)
      OMP_NUM_THREADS=2 ctest --test-dir $B -j 8 --output-on-failure ${CTEST_ARGS:-} >"$OUT/ctest.log" 2>&1; tail -15 "$OUT/ctest.log"
      grep -E "^ *[0-9]+/[0-9]+ Test +#[0-9]+: (CudaBackend|OptimGpu|Numerics|Resume|Ranks|mpi_)" "$OUT/ctest.log" | sed 's/ \.\.\.*/ /' ;;
    profile)
      $B/dptrain train --device cuda --max-steps 400 --profile --no-progress --out /tmp/dr/prof > "$OUT/profile.log" 2>&1
      echo "profile rc=$?"; sed -n "/^profile:/,/^images/p" "$OUT/profile.log"
      mpirun -np 2 --oversubscribe $B/dptrain train --device cuda --comm mpi --max-steps 200 --profile --no-progress --out /tmp/dr/prof2 > "$OUT/profile2.log" 2>&1
      echo "profile 2 ranks rc=$?"; sed -n "/^profile:/,/^images/p" "$OUT/profile2.log"
      $B/dptrain train --device cuda --max-steps 20 --check-numerics --set train.optimizer.lr=1e30 --no-progress --out /tmp/dr/nan > "$OUT/numerics.log" 2>&1
      echo "check-numerics rc=$?"; tail -2 "$OUT/numerics.log" ;;
    preempt)
      $B/dptrain train --device cuda --out /tmp/dr/pre --no-progress > "$OUT/preempt1.log" 2>&1 &
      pid=$!; sleep 4; kill -TERM $pid; wait $pid; echo "SIGTERM rc=$?"; grep -E "^epoch|preempted|resume" "$OUT/preempt1.log"
      $B/dptrain train --device cuda --out /tmp/dr/pre --no-progress --resume auto > "$OUT/preempt2.log" 2>&1; echo "resume rc=$?"
      grep -E "^epoch|^done|^resume" "$OUT/preempt2.log"; $B/dptrain inspect /tmp/dr/pre/best.safetensors | tail -1 ;;
    survey)
      $B/bench/dptrain_conv_survey > "$OUT/survey.jsonl" 2> "$OUT/survey.err"; echo "survey rc=$?"; tail -3 "$OUT/survey.err"
      python3 - "$OUT/survey.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
best = {}
for r in rows:
    if isinstance(r["algo"], str): continue  # the graph-timed rows ("tiled", "cudnn-best-graph"), printed apart
    for det in (True, False):
        if det and not r["deterministic"]: continue
        k = (r["layer"], r["direction"], r["layout"], r["math"], det)
        if k not in best or r["us"] < best[k]["us"]: best[k] = r
for r in rows:
    if r["algo"] == -1: print("%-6s %-15s direct kernels        %8.1f us" % (r["layer"], r["direction"], r["us"]))
    if isinstance(r["algo"], str): print("%-6s %-15s %-21s %8.1f us (in a CUDA graph)" % (r["layer"], r["direction"], r["algo"], r["us"]))
for k in sorted(best):
    r = best[k]; print("%-6s %-15s %-4s %-4s %-8s algo %d %8.1f us %6.2f TFLOP/s" % (k[0], k[1], k[2], k[3], "det" if k[4] else "any", r["algo"], r["us"], r["tflops"]))
PY
      ;;
    batches)  # the acceptance table: both configs (or $BATCH_CONFIGS), float32 and tf32, batch 1 to 8192; PyTorch (graph) in the same call
      for c in ${BATCH_CONFIGS:-mnist_cnn lenet5}; do for t in float32 tf32; do for b in ${BATCHES:-1 3 64 257 1000 1024 2048 4096 8192}; do
        s=$(( b >= 1024 ? 60 : 200 ))
        r=$(timeout 300 $B/dptrain bench --config configs/$c.yaml --device cuda --steps $s --warmup 5 --batch-size $b \
              --set train.precision=$t 2>"$OUT/bench_err.log" | tee -a "$OUT/batches.jsonl")
        echo "dptrain $c $t $b rc=$? $(echo "$r" | python3 -c "import json,sys; r=json.loads(sys.stdin.read() or '{}'); print(r.get('ms_per_step'), r.get('images_per_second'))" 2>/dev/null) $(tail -1 "$OUT/bench_err.log")"
      done; done; done
      for c in ${BATCH_CONFIGS:-mnist_cnn lenet5}; do
        timeout 500 python3 bench/pytorch_reference.py --net $c --mode graph --precision float32 tf32 --steps 50 --warmup 5 \
          --batch ${PT_BATCHES:-${BATCHES:-1 3 64 257 1000 1024 2048 4096 8192}} | tee -a "$OUT/batches.jsonl" |
          python3 -c "import json,sys; [print('pytorch', r['config'], r['precision'], r['batch'], r['ms_per_step'], r['images_per_second']) for r in map(json.loads, sys.stdin)]"
      done ;;
    sanitize)  # memcheck over planning (every candidate, DPTRAIN_PLAN_TIMING=quick) and a few graph steps; racecheck on the kernel sweep
      for a in "configs/mnist_cnn.yaml 1024" "configs/lenet5.yaml 4096" "configs/mnist_cnn.yaml 4096"; do set -- $a
        memcheck_bench "memcheck_$(basename $1 .yaml)_$2.log" 400 --config $1 --batch-size $2
      done
      bash "$0" racecheck ;;
    fusedsanitize)  # lenet5's fused pass under the sanitizers: memcheck over planning (every fused form and the layered
      # pass) and 20 steps at float32 257 and tf32 1000 and 4096, with the planner's choice; racecheck of its tests
      for a in "float32 257" "tf32 1000" "tf32 4096"; do set -- $a
        memcheck_bench "memcheck_lenet5_$1_$2.log" 150 --config configs/lenet5.yaml --batch-size $2 \
          --set train.precision=$1 --set train.plan_cache=off
        grep -m1 "train pass" "$OUT/memcheck_lenet5_$1_$2.log"
      done
      RACECHECK_PARTS='Lenet5FusedPass.SameBitsEveryRun:Lenet5FusedPass.PartsInACapturedGraphGiveTheEagerBits' \
        RACECHECK_TIMEOUT=200 bash "$0" racecheck ;;
    racecheck)  # racecheck of dptrain's own kernels (cuDNN's and cuBLAS's run uninstrumented: with them, TiledConv.*
      # alone took 91 s and ShapeSweep.Conv more than 400 s on an H100, and on 2026-12-06 the sanitizer failed
      # on a hardware exception in the conv sweep's first shape), the sweeps at fewer shapes, the conv sweep
      # apart, then every other GPU test; each part with its own limit
      export DPTRAIN_SWEEP_CONV=${DPTRAIN_SWEEP_CONV:-16} DPTRAIN_SWEEP_CONV_LARGE=${DPTRAIN_SWEEP_CONV_LARGE:-1} \
        DPTRAIN_SWEEP_LINEAR=${DPTRAIN_SWEEP_LINEAR:-16} DPTRAIN_SWEEP_LOSS=${DPTRAIN_SWEEP_LOSS:-16} \
        DPTRAIN_SWEEP_POOL=${DPTRAIN_SWEEP_POOL:-12} DPTRAIN_SWEEP_AVGPOOL=${DPTRAIN_SWEEP_AVGPOOL:-12} \
        DPTRAIN_SWEEP_DROPOUT=${DPTRAIN_SWEEP_DROPOUT:-8}
      parts=${RACECHECK_PARTS:-'SkinnyGemm.*:ShapeSweep.*:-ShapeSweep.Conv* ShapeSweep.Conv* -ShapeSweep.*:SkinnyGemm.*'}
      i=0; for part in $parts; do i=$((i + 1))
        log="$OUT/racecheck_$i.log"
        timeout ${RACECHECK_TIMEOUT:-300} compute-sanitizer --tool racecheck --kernel-name kns=dptrain --print-limit 5 \
          $B/tests/dptrain_gpu_tests --gtest_filter="$part" > "$log" 2>&1
        echo "racecheck $part rc=$?: $(grep -E 'RACECHECK SUMMARY|ERROR SUMMARY' "$log")"
        grep -E "^\[  (PASSED|FAILED) |^\[==========\]" "$log"; grep -m5 -E "Race reported|Error:|hazard" "$log"
      done ;;
    longsweep)
      DPTRAIN_SWEEP=long timeout ${LONGSWEEP_TIMEOUT:-500} $B/tests/dptrain_gpu_tests --gtest_filter='ShapeSweep.*' > "$OUT/longsweep.log" 2>&1
      echo "long sweep rc=$?"; grep -E "^sweep:|FAILED|Failure" "$OUT/longsweep.log" | head -20 ;;
    probe)  # the fused LeNet-5 pass alone (bench/lenet5_step_probe.cu, built beside nothing else): its double-precision
      # check, its times at $PROBE_NS, and the batch cut into 2 to 4 parts on graph branches (`split`), 2 rounds
      if ! nvcc -O3 -arch=sm_90 -std=c++17 -I. -Isrc bench/lenet5_step_probe.cu src/core/cuda_check.cpp -o /tmp/dr/probe \
        > "$OUT/probe_build.log" 2>&1; then
        echo "probe build failed"; head -20 "$OUT/probe_build.log"; continue  # the steps after it still run
      fi
      { timeout 30 /tmp/dr/probe check
        for round in 1 2; do echo "--- round $round"
          timeout 30 /tmp/dr/probe time ${PROBE_NS:-64 128 257 300 1000 8192}
          timeout 30 /tmp/dr/probe split 2 200 240 257 300 384 1000
          timeout 30 /tmp/dr/probe split 3 257 384 1000
          timeout 30 /tmp/dr/probe split 4 257 1000
        done; } > "$OUT/probe.txt" 2>&1
      echo "probe rc=$?"; grep -E "^check|NOT bit|gradient check|^n=|^split|^---|^probe:" "$OUT/probe.txt" | sed "s/: loss .*->/ ->/" ;;
    quickbench)  # dptrain alone, graph step in float32 and tf32
      for t in float32 tf32; do $B/dptrain bench --device cuda --steps 400 --set train.precision=$t | tee -a "$OUT/bench.jsonl"; done ;;
    bench)
      for t in float32 tf32; do $B/dptrain bench --device cuda --steps 400 --set train.precision=$t | tee -a "$OUT/bench.jsonl"; done
      for t in float32 tf32; do $B/dptrain bench --device cuda --steps 400 --set train.precision=$t --set train.deterministic=false | tee -a "$OUT/bench.jsonl"; done
      $B/dptrain bench --device cuda --steps 400 --set train.cuda_graph=false | tee -a "$OUT/bench.jsonl"
      python3 bench/pytorch_reference.py --mode resident --mode examples --steps 200 | tee -a "$OUT/bench.jsonl" ;;
    kernels)  # every kernel of one eager training step (step 300) with its GPU time, from ncu
      ncu --clock-control none --cache-control none --nvtx --nvtx-include "step 300/" --metrics gpu__time_duration.sum \
        --csv --print-units base \
        $B/dptrain train --device cuda --max-steps 300 --profile --no-progress --out /tmp/dr/ncu > "$OUT/ncu.csv" 2> "$OUT/ncu.err"
      echo "ncu rc=$?"; tail -2 "$OUT/ncu.err"
      python3 - "$OUT/ncu.csv" <<'PY'
import csv, sys
rows = [r for r in csv.reader(l for l in open(sys.argv[1]) if l.startswith('"'))]
head, rows = rows[0], rows[1:]
k, v = head.index("Kernel Name"), head.index("Metric Value")
total = 0.0
for r in rows:
    us = float(r[v].replace(",", "")) / 1000; total += us
    print("%8.1f us  %s" % (us, r[k][:110]))
print("%8.1f us  total of %d kernels" % (total, len(rows)))
PY
      ;;
    timeline)  # the GPU timeline of the graph-replayed step (bench/kernel_timeline.cpp), float32 and tf32
      lib=$PWD/$B/bench/libdptrain_kernel_timeline.so
      [ -f "$lib" ] || { echo "no $lib (CUPTI not found at configure time)"; continue; }
      for t in float32 tf32; do
        KERNEL_TIMELINE_OUT=/tmp/dr/timeline_$t.tsv CUDA_INJECTION64_PATH=$lib \
          $B/dptrain bench --device cuda --steps 200 --set train.precision=$t ${TIMELINE_ARGS:-} > "$OUT/timeline_$t.json"
        echo "timeline $t rc=$?: $(cat "$OUT/timeline_$t.json")"
        python3 bench/timeline_report.py /tmp/dr/timeline_$t.tsv | tee "$OUT/timeline_$t.txt"
        gzip -c /tmp/dr/timeline_$t.tsv > "$OUT/timeline_$t.tsv.gz"
      done ;;
    ncuconv)  # ncu's view of the first launch (conv2, batch 64, float32) of each of dptrain's 3x3 kernels in the survey
      for k in ${NCU_KERNELS:-mma_forward_kernel mma_filter_partial tiled_forward tiled_filter_partial}; do
        ncu --clock-control none -k "regex:$k" -c 1 --section SpeedOfLight --section Occupancy --section LaunchStats \
          --section WarpStateStats --section SchedulerStats --section MemoryWorkloadAnalysis \
          --section ComputeWorkloadAnalysis --metrics "regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio" \
          $B/bench/dptrain_conv_survey > "$OUT/ncu_$k.txt" 2>&1
        echo "ncu $k rc=$?"
        grep -E "Duration|Registers Per|Achieved Occupancy|Theoretical Occupancy|Block Limit|Warp Cycles Per Issued|Issue Slots Busy|Compute \(SM\) Thr|Memory Thr|L2 Hit|L1/TEX Hit|Dynamic Shared|Grid Size|Waves Per SM|Stall|Executed Ipc A|Pipe" "$OUT/ncu_$k.txt" | head -40
        grep -E "stalled" "$OUT/ncu_$k.txt" | sort -k3 -n -r | head -8
      done ;;
    ncustep)  # ncu's view of the training step's own kernels: one profile of the first launches in `dptrain bench`
      ncu --clock-control none -k "regex:${NCU_KERNELS:-skinny_gemm_kernel|conv_pool|filter_plane|narrow_linear|linear_loss}" \
        -c ${NCU_COUNT:-8} --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
        --section MemoryWorkloadAnalysis --metrics "regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio" \
        $B/dptrain bench --device cuda --steps 3 --warmup 1 --set train.cudnn_benchmark=false > "$OUT/ncu_step.txt" 2>&1
      echo "ncu rc=$?"
      python3 - "$OUT/ncu_step.txt" <<'PY'
import re, sys
keep = re.compile(r"^\s+(Duration|Registers Per Thread|Achieved Occupancy|Theoretical Occupancy|Memory Throughput|DRAM Throughput|Issue Slots Busy|Grid Size|Block Size|Waves Per SM|L2 Hit Rate|L1/TEX Hit Rate)\s")
kernel, stalls = None, []
def number(text):
    try: return float(text)
    except ValueError: return 0.0
def flush():
    if kernel: print("   stalls:", ", ".join("%s %s" % s for s in sorted(stalls, key=lambda s: -number(s[1]))[:4]))
for line in open(sys.argv[1]):
    if re.match(r"^  \S.*Context \d+, Stream", line):
        flush(); kernel, stalls = line.strip()[:150], []; print(kernel)
    elif kernel and keep.match(line): print("   " + " ".join(line.split()))
    elif kernel and "issue_stalled" in line:
        f = line.split(); stalls.append((f[0].replace("smsp__average_warps_issue_stalled_", "").replace("_per_issue_active.ratio", ""), f[-1].replace(",", "")))
flush()
PY
      ;;
    cpubench)
      for n in 2 16; do
        OMP_NUM_THREADS=$n $B/dptrain bench --device cpu --threads $n --steps 30 --warmup 3 | tee -a "$OUT/bench.jsonl"
        python3 bench/pytorch_reference.py --mode cpu --threads $n --steps 30 --warmup 3 | tee -a "$OUT/bench.jsonl"
      done ;;
    train)
      /usr/bin/time -v $B/dptrain train --device cuda --out "$OUT/run" --no-progress > "$OUT/train.log" 2>&1
      grep -E "^epoch|^done|Elapsed" "$OUT/train.log"
      python3 -c "
from safetensors.torch import load_file
from safetensors import safe_open
sd = load_file('$OUT/run/final.safetensors'); print({k: tuple(v.shape) for k, v in sd.items()})
print(safe_open('$OUT/run/final.safetensors', 'pt').metadata()['format'])" ;;
    mpi)
      common=(--max-steps 30 --set train.batch_size=60 --no-progress --set "train.optimizer={type: sgd, lr: 0.01, momentum: 0.5}" --set "train.schedule={type: constant}")
      $B/dptrain train --device cuda "${common[@]}" --out /tmp/dr/r1 > "$OUT/mpi1.log" 2>&1; echo "1 rank rc=$?"
      mpirun -np 2 --oversubscribe $B/dptrain train --device cuda --comm mpi "${common[@]}" --out /tmp/dr/r2 > "$OUT/mpi2.log" 2>&1; echo "2 ranks --comm mpi rc=$?"
      mpirun -np 1 $B/dptrain train --device cuda --comm nccl "${common[@]}" --out /tmp/dr/r3 > "$OUT/nccl1.log" 2>&1; echo "1 rank nccl rc=$?"
      start=$(date +%s); mpirun -np 2 --oversubscribe $B/dptrain train --device cuda "${common[@]}" --out /tmp/dr/r4 > "$OUT/mpi_refuse.log" 2>&1
      echo "2 ranks nccl on 1 GPU rc=$? in $(( $(date +%s) - start )) s"; grep -m2 error "$OUT/mpi_refuse.log"
      python3 - <<'PY'
from safetensors.torch import load_file
a = load_file('/tmp/dr/r1/final.safetensors')
for other in ('/tmp/dr/r2', '/tmp/dr/r3'):
    b = load_file(other + '/final.safetensors')
    num = sum(float(((a[k] - b[k]) ** 2).sum()) for k in a); den = sum(float((a[k] ** 2).sum()) for k in a)
    print(other, 'rel diff vs 1 rank', (num / den) ** 0.5)
PY
      ;;
    cpuepoch)
      $B/dptrain train --device cpu --epochs 1 --out /tmp/dr/cpu1 --no-progress > "$OUT/cpuepoch.log" 2>&1; echo "rc=$?"
      grep -E "^epoch|^done" "$OUT/cpuepoch.log" ;;
    kernelcheck)  # dptrain's 3x3 convolution kernels under memcheck and racecheck, on shapes with partial tiles
      for tool in memcheck racecheck; do
        compute-sanitizer --tool $tool --error-exitcode 9 $B/tests/dptrain_gpu_tests \
          --gtest_filter='TiledConv.MnistConv2Batch1:TiledConv.OddSizesPad1:TiledConv.SmallestImagePad2' > "$OUT/kernelcheck_$tool.log" 2>&1
        echo "$tool rc=$?"; grep -E "ERROR SUMMARY|RACECHECK SUMMARY|PASSED|FAILED" "$OUT/kernelcheck_$tool.log" | tail -3
      done ;;
    sanitizetrain)  # memcheck over a 30-step training run of the default config (SANITIZE_ARGS adds flags)
      compute-sanitizer --tool memcheck --error-exitcode 9 $B/dptrain train --device cuda --max-steps 30 --out /tmp/dr/san --no-progress ${SANITIZE_ARGS:-} > "$OUT/sanitize.log" 2>&1
      echo "memcheck rc=$?"; tail -4 "$OUT/sanitize.log" ;;
    resumetimed)  # issue 22 acceptance: timed planning, SIGKILL mid-epoch, --resume auto ends bit for bit at the
                  # uninterrupted run (both runs share one cache; it is emptied before the resume, so the
                  # continuation's plan comes from the run folder's plans.json)
      x=$(mktemp -d /tmp/dr/xdg.XXXX)
      common=(--device cuda --max-steps 600 --no-progress --set checkpoint.every_steps=100)
      XDG_CACHE_HOME=$x $B/dptrain train "${common[@]}" --out /tmp/dr/rt_a > "$OUT/resumetimed_a.log" 2>&1; echo "uninterrupted rc=$?"
      XDG_CACHE_HOME=$x $B/dptrain train "${common[@]}" --out /tmp/dr/rt_b > "$OUT/resumetimed_b1.log" 2>&1 & pid=$!
      while [ ! -e /tmp/dr/rt_b/ckpt-00000300.safetensors ] && kill -0 $pid 2>/dev/null; do sleep 0.05; done
      kill -KILL $pid; wait $pid; echo "killed rc=$? at $(ls /tmp/dr/rt_b | grep -c ckpt) checkpoint(s)"
      rm -rf "$x/dptrain"
      XDG_CACHE_HOME=$x $B/dptrain train "${common[@]}" --out /tmp/dr/rt_b --resume auto > "$OUT/resumetimed_b2.log" 2>&1; echo "resume rc=$?"
      python3 - <<'PY'
from safetensors.torch import load_file
a = load_file('/tmp/dr/rt_a/final.safetensors'); b = load_file('/tmp/dr/rt_b/final.safetensors')
print('resumetimed: bit for bit', all(bool((a[k] == b[k]).all()) for k in a), 'tensors', len(a))
PY
      ;;
    coldwarm)  # issue 22: exec to the first step with an empty plan cache (cold) and then warm, mnist_cnn and mnist_fast, 2 rounds
      # each with a fresh XDG_CACHE_HOME, after one run that brings the libraries into the page cache
      XDG_CACHE_HOME=$(mktemp -d /tmp/dr/xdg.XXXX) $B/dptrain train --device cuda --max-steps 1 --no-progress --out /tmp/dr/cw_pre > /dev/null 2>&1
      for cfg in mnist_cnn mnist_fast; do for round in 1 2; do
        c=$(mktemp -d /tmp/dr/xdg.XXXX)
        for phase in cold warm; do
          XDG_CACHE_HOME=$c /usr/bin/time -f "%e" -o /tmp/dr/wall $B/dptrain train --config configs/$cfg.yaml --device cuda --max-steps 1 \
            --no-progress --profile --out /tmp/dr/cw_${cfg}_${round}_$phase > /tmp/dr/cw.log 2>&1
          echo "$cfg round $round $phase rc=$? wall $(cat /tmp/dr/wall) s: $(head -1 /tmp/dr/cw_${cfg}_${round}_$phase/metrics.jsonl | \
            python3 -c "import json,sys; s=json.loads(sys.stdin.read())['startup']; print('exec to first step %.3f s; planning %.0f ms' % (s['total_s'], 1000 * s['phases']['planning']))")"
        done
      done; done ;;
    cachewarm)  # plan cache (issue 22): one-step wall time cold (empty cache) vs warm, 3 rounds; then a run
                # repeated from the first's plans.json must reuse every choice (no timing) and leave it unchanged
      first=""
      for round in 1 2 3; do
        c=$(mktemp -d /tmp/dr/xdg.XXXX)
        for phase in cold warm; do
          d=$(mktemp -d /tmp/dr/cw.XXXX); rmdir "$d"; [ -z "$first" ] && first=$d
          XDG_CACHE_HOME=$c /usr/bin/time -f "%e" -o /tmp/dr/wall $B/dptrain train --device cuda --max-steps 1 --no-progress --out "$d" >"$d.log" 2>&1
          echo "round $round $phase: rc=$? $(cat /tmp/dr/wall) s wall; $(grep -o '"impl"' $c/dptrain/plans.json 2>/dev/null | wc -l) cached plans; $(grep -c warning "$d.log") warnings"
        done
      done
      sum0=$(sha256sum < "$first/plans.json")
      $B/dptrain bench --device cuda --steps 20 --set train.plan_cache="$first/plans.json" >"$OUT/cachewarm_path.log" 2>&1
      echo "PATH reuse rc=$?: $(grep -o 'recorded plan' "$OUT/cachewarm_path.log" | wc -l) recorded choices, $(grep -o '[0-9] us' "$OUT/cachewarm_path.log" | wc -l) timed, file unchanged: $([ "$sum0" = "$(sha256sum < "$first/plans.json")" ] && echo yes || echo NO)"
      # rank 0 plans and broadcasts (--comm mpi, two ranks on one GPU, cold cache): one plans.json, no warnings
      c=$(mktemp -d /tmp/dr/xdg.XXXX)
      XDG_CACHE_HOME=$c mpirun -np 2 --oversubscribe -x XDG_CACHE_HOME $B/dptrain train --device cuda --comm mpi --max-steps 5 --set train.batch_size=60 --no-progress --out /tmp/dr/cwmpi > "$OUT/cachewarm_mpi.log" 2>&1
      echo "2 ranks --comm mpi rc=$?: $(grep -c warning "$OUT/cachewarm_mpi.log") warnings, run plans.json $(grep -c impl /tmp/dr/cwmpi/plans.json) records, cache $(grep -c impl $c/dptrain/plans.json) records" ;;
    augment)  # data.augment: its GPU tests (racecheck too), step time with and without it (interleaved), the gather's share under --profile
      $B/tests/dptrain_gpu_tests --gtest_filter='AugmentGpu.*' > "$OUT/augment_tests.log" 2>&1
      echo "augment tests rc=$?"; grep -E "^\[  |Failure|differ" "$OUT/augment_tests.log" | head -30
      compute-sanitizer --tool racecheck --error-exitcode 9 $B/tests/dptrain_gpu_tests --gtest_filter='AugmentGpu.BatchesMatch*' > "$OUT/augment_racecheck.log" 2>&1
      echo "racecheck rc=$?"; grep -E "RACECHECK SUMMARY|ERROR SUMMARY" "$OUT/augment_racecheck.log" | tail -2
      aug="data.augment={rotation: 15, scale: 0.15, translation: 2.8, shear: 5, erasing: 0.5}"
      for round in 1 2; do for b in 64 1024 8192; do
        echo -n "batch $b plain: "; bench_rate augment.jsonl $B/dptrain bench --device cuda --steps 400 --batch-size $b
        echo -n "batch $b augment: "; bench_rate augment.jsonl $B/dptrain bench --device cuda --steps 400 --batch-size $b --set "$aug"
      done; done
      $B/dptrain train --device cuda --max-steps 400 --profile --no-progress --out /tmp/dr/prof_plain > "$OUT/augment_profile_plain.log" 2>&1
      echo "profile without augmentation rc=$?"; sed -n "/^profile:/,/^images/p" "$OUT/augment_profile_plain.log"
      $B/dptrain train --device cuda --max-steps 400 --profile --no-progress --set "$aug" --out /tmp/dr/prof_aug > "$OUT/augment_profile.log" 2>&1
      echo "profile with augmentation rc=$?"; sed -n "/^profile:/,/^images/p" "$OUT/augment_profile.log" ;;
    sched)  # issue 23 (sched branch): onecycle/label smoothing/avgpool GPU tests, their sweeps (long, and memcheck), e2e resume, one epoch of mnist_onecycle
      $B/tests/dptrain_gpu_tests --gtest_filter='NewLayersGpu.*:ShapeSweep.AvgPool:ShapeSweep.Loss:CudaBackend.Loss*:CudaBackend.LinearBackwardWithLoss*:OptimGpu.*' > "$OUT/sched_gpu.log" 2>&1
      echo "gpu tests rc=$?"; grep -E "^\[  (PASSED|FAILED|SKIPPED) |Failure|worst" "$OUT/sched_gpu.log" | head -30
      DPTRAIN_SWEEP=long timeout 400 $B/tests/dptrain_gpu_tests --gtest_filter='ShapeSweep.AvgPool:ShapeSweep.Loss' > "$OUT/sched_longsweep.log" 2>&1
      echo "long sweep rc=$?"; grep -E "^\[  (PASSED|FAILED) |worst" "$OUT/sched_longsweep.log" | head
      timeout 400 compute-sanitizer --tool memcheck --error-exitcode 9 $B/tests/dptrain_gpu_tests --gtest_filter='ShapeSweep.AvgPool:NewLayersGpu.AvgPoolsMatchCpuBitForBit' > "$OUT/sched_memcheck.log" 2>&1
      echo "memcheck rc=$?"; grep -E "ERROR SUMMARY" "$OUT/sched_memcheck.log" | tail -1
      $B/tests/e2e/dptrain_e2e_tests --gtest_filter='OneCycleAvgPool.*' > "$OUT/sched_e2e.log" 2>&1; echo "e2e rc=$?"; grep -E "^\[  (PASSED|FAILED|SKIPPED) " "$OUT/sched_e2e.log"
      $B/dptrain train --device cuda --config configs/mnist_onecycle.yaml --no-progress --out /tmp/dr/onecycle > "$OUT/sched_onecycle.log" 2>&1
      echo "mnist_onecycle 1 epoch rc=$?"; grep -E "^epoch" "$OUT/sched_onecycle.log" ;;
    bncheck)  # issue 23: a BatchNorm network trained on the GPU, its final.safetensors in PyTorch vs `dptrain eval`
      $B/dptrain train --device cuda --config configs/mnist_bn.yaml --epochs ${BN_EPOCHS:-2} --out /tmp/dr/bn --no-progress > "$OUT/bncheck_train.log" 2>&1
      echo "train rc=$?"; grep -E "^epoch|^done" "$OUT/bncheck_train.log"
      python3 bench/pytorch_bn_check.py --run /tmp/dr/bn --dptrain $B/dptrain --data data/mnist | tee -a "$OUT/bncheck.jsonl"
      echo "bncheck rc=${PIPESTATUS[0]}"
      $B/dptrain inspect /tmp/dr/bn/final.safetensors | grep -E "bn1|tensors" | head -8
      # Bitwise resume with BatchNorm on: 200 steps at once against 120 + 80 resumed (checkpoint every 40).
      for r in whole cut; do rm -rf /tmp/dr/bn_$r; done
      common=(--device cuda --config configs/mnist_bn.yaml --no-progress --set train.cudnn_benchmark=false --set checkpoint.every_steps=40)
      $B/dptrain train "${common[@]}" --max-steps 200 --out /tmp/dr/bn_whole > "$OUT/bn_resume.log" 2>&1
      $B/dptrain train "${common[@]}" --max-steps 120 --out /tmp/dr/bn_cut >> "$OUT/bn_resume.log" 2>&1
      $B/dptrain train "${common[@]}" --max-steps 200 --out /tmp/dr/bn_cut --resume auto >> "$OUT/bn_resume.log" 2>&1
      echo "resume runs rc=$?"
      python3 - <<'PY'
from safetensors.torch import load_file
a, b = load_file('/tmp/dr/bn_whole/final.safetensors'), load_file('/tmp/dr/bn_cut/final.safetensors')
same = sorted(a) == sorted(b) and all(bool((a[k] == b[k]).all()) for k in a)
print('bn resume bitwise identical:', same, '; running stats:', [k for k in a if 'running' in k][:2])
PY
      # Ghost and sync statistics on 2 ranks sharing one GPU (--comm mpi), against the plain one-rank run (SGD, 50 steps).
      for mode in "0" "1"; do
        c2=(--device cuda --config configs/mnist_bn.yaml --no-progress --max-steps 50 --set "train.optimizer={type: sgd, lr: 0.01, momentum: 0.5}" --set "train.schedule={type: constant}" --set model.layers.1.sync=$mode --set model.layers.4.sync=$mode --set model.layers.10.sync=$mode)
        $B/dptrain train "${c2[@]}" --out /tmp/dr/bn_sync$mode > "$OUT/bn_sync$mode.log" 2>&1; echo "sync=$mode 1 rank rc=$?"
        mpirun -np 2 --oversubscribe $B/dptrain train "${c2[@]}" --comm mpi --out /tmp/dr/bn_sync${mode}_mpi >> "$OUT/bn_sync$mode.log" 2>&1; echo "sync=$mode 2 ranks --comm mpi rc=$?"
      done
      python3 - <<'PY'
from safetensors.torch import load_file
for mode in ('0', '1'):
    a, b = load_file('/tmp/dr/bn_sync%s/final.safetensors' % mode), load_file('/tmp/dr/bn_sync%s_mpi/final.safetensors' % mode)
    rel = max(float((a[k].double() - b[k].double()).abs().max() / (a[k].double().abs().max() + 1e-12)) for k in a)
    print('sync=%s 2 ranks --comm mpi vs 1 rank: max relative difference %.3g' % (mode, rel))
PY
      ;;
    bndrift)  # BatchNorm (mnist_bn, SGD) after 5 and 50 steps: 2 ranks (--comm mpi, one GPU) and the CPU against one GPU rank,
              # ghost and sync statistics; the worst tensors by relative difference
      for mode in 0 1; do for steps in 5 50; do
        c2=(--config configs/mnist_bn.yaml --no-progress --max-steps $steps --set "train.optimizer={type: sgd, lr: 0.01, momentum: 0.5}" --set "train.schedule={type: constant}" --set train.exact_convolutions=true --set model.layers.1.sync=$mode --set model.layers.4.sync=$mode --set model.layers.10.sync=$mode)
        $B/dptrain train --device cuda "${c2[@]}" --out /tmp/dr/drift_${mode}_${steps}_g1 > /tmp/dr/drift.log 2>&1 || tail -3 /tmp/dr/drift.log
        mpirun -np 2 --oversubscribe $B/dptrain train --device cuda --comm mpi "${c2[@]}" --out /tmp/dr/drift_${mode}_${steps}_g2 > /tmp/dr/drift.log 2>&1 || tail -3 /tmp/dr/drift.log
        $B/dptrain train --device cpu "${c2[@]}" --out /tmp/dr/drift_${mode}_${steps}_c1 > /tmp/dr/drift.log 2>&1 || tail -3 /tmp/dr/drift.log
        $B/dptrain train --device cuda "${c2[@]}" --set train.cudnn_benchmark=false --out /tmp/dr/drift_${mode}_${steps}_h1 > /tmp/dr/drift.log 2>&1 || tail -3 /tmp/dr/drift.log
        mpirun -np 2 --oversubscribe $B/dptrain train --device cuda --comm mpi "${c2[@]}" --set train.cudnn_benchmark=false --out /tmp/dr/drift_${mode}_${steps}_h2 > /tmp/dr/drift.log 2>&1 || tail -3 /tmp/dr/drift.log
      done; done
      python3 - <<'PY'
from safetensors.torch import load_file
def worst(a, b):
    r = sorted(((float((a[k].double() - b[k].double()).norm() / max(float(a[k].double().norm()), 1e-6)), k) for k in a), reverse=True)
    return ' '.join('%s %.2g' % (k, d) for d, k in r[:3])
for mode in '01':
    for steps in (5, 50):
        base = '/tmp/dr/drift_%s_%d_' % (mode, steps)
        try:
            g1 = load_file(base + 'g1/final.safetensors')
            for other, what in (('g2', '2 ranks'), ('c1', 'cpu'), ('h1', 'heuristic 1 rank')):
                print('sync=%s steps %d %s vs 1 GPU rank: %s' % (mode, steps, what, worst(g1, load_file(base + other + '/final.safetensors'))))
            print('sync=%s steps %d heuristic 2 ranks vs heuristic 1: %s' % (mode, steps, worst(load_file(base + 'h1/final.safetensors'), load_file(base + 'h2/final.safetensors'))))
        except Exception as e: print(mode, steps, 'failed', e)
PY
      ;;
    bnbench)  # issue 23: the BatchNorm network's step time beside PyTorch's (eager and CUDA graph), same call
      for t in float32 tf32; do
        echo -n "dptrain mnist_bn $t: "; bench_rate bnbench.jsonl $B/dptrain bench --config configs/mnist_bn.yaml --device cuda --steps 400 --set train.precision=$t
        echo -n "dptrain mnist_cnn $t: "; bench_rate bnbench.jsonl $B/dptrain bench --config configs/mnist_cnn.yaml --device cuda --steps 400 --set train.precision=$t
      done
      timeout 500 python3 bench/pytorch_reference.py --net mnist_bn --mode resident --mode graph --precision float32 tf32 --steps 200 --warmup 20 |
        tee -a "$OUT/bnbench.jsonl" | python3 -c "import json,sys; [print('pytorch', r['config'], r['mode'], r['precision'], r['ms_per_step'], r['images_per_second']) for r in map(json.loads, sys.stdin)]" ;;
    tta)  # issue 24: mnist_fast over 10 seeds beside PyTorch (eager, CUDA graph), after one run that warms the plan cache; then its wall time alone
      $B/dptrain train --config configs/mnist_fast.yaml --device cuda --out /tmp/dr/tta_warm --no-progress > "$OUT/tta_warm.log" 2>&1; echo "warm-up rc=$?"
      python3 bench/time_to_accuracy.py --config configs/mnist_fast.yaml --seeds 10 --dptrain $B/dptrain --out /tmp/dr/tta_fast > "$OUT/tta_fast.log" 2>&1
      echo "mnist_fast rc=$?"; tail -6 "$OUT/tta_fast.log"
      fast_walls
      $B/dptrain train --config configs/mnist_fast.yaml --device cuda --out /tmp/dr/tta_prof --no-progress --profile > "$OUT/tta_profile.log" 2>&1; echo "profile rc=$?" ;;
    ttaquick)  # issue 24 in a short call: mnist_fast over 10 seeds (dptrain alone), then 3 seeds beside PyTorch eager and graph
      $B/dptrain train --config configs/mnist_fast.yaml --device cuda --out /tmp/dr/tta_warm --no-progress > "$OUT/tta_warm.log" 2>&1; echo "warm-up rc=$?"
      python3 bench/time_to_accuracy.py --config configs/mnist_fast.yaml --seeds 10 --pytorch none --dptrain $B/dptrain --out /tmp/dr/tta_fast > "$OUT/tta_fast10.log" 2>&1
      echo "mnist_fast 10 seeds rc=$?"; tail -4 "$OUT/tta_fast10.log"
      fast_walls
      timeout 120 python3 bench/time_to_accuracy.py --config configs/mnist_fast.yaml --seeds 3 --dptrain $B/dptrain --out /tmp/dr/tta_fast3 > "$OUT/tta_fast3.log" 2>&1
      echo "mnist_fast 3 seeds with PyTorch rc=$?"; tail -6 "$OUT/tta_fast3.log"; grep -h error "$OUT/tta_fast3.log" | head -3 ;;
    ttadiag)  # ttaprofile, then one PyTorch graph run's stderr
      bash "$0" ttaprofile
      timeout 120 python3 bench/time_to_accuracy.py --config configs/mnist_fast.yaml --seeds 1 --pytorch graph --dptrain $B/dptrain --out /tmp/dr/tta_diag > "$OUT/tta_diag.log" 2>&1
      echo "pytorch graph rc=$?"; tail -3 "$OUT/tta_diag.log"; grep -m3 -E "Error|error" /tmp/dr/tta_diag/pytorch-graph-seed1.err 2>/dev/null ;;
    ttaprofile)  # issue 24's time on the GPU: mnist_fast's start-up and epoch-end tables, train_eval's parts, module loading
      $B/dptrain train --config configs/mnist_fast.yaml --device cuda --out /tmp/dr/tta_prof --no-progress --profile > "$OUT/tta_profile.log" 2>&1
      echo "profile rc=$?"; sed -n "/^profile:/,\$p" "$OUT/tta_profile.log" | head -70
      python3 -c "import json; s=json.load(open('/tmp/dr/tta_prof/summary.json')); print({k: s[k] for k in ('train_eval_seconds','training_seconds','eval_seconds','upload_seconds','test_accuracy')})"
      # What warm planning's time is: with every module loaded at context creation (EAGER), planning
      # is only the checks; the difference to LAZY (CUDA's default) is the kernels' first launches.
      for mode in LAZY EAGER; do
        CUDA_MODULE_LOADING=$mode $B/dptrain train --config configs/mnist_fast.yaml --device cuda --max-steps 1 --no-progress \
          --out /tmp/dr/tta_load_$mode > /dev/null 2>&1
        echo -n "module loading $mode: rc=$? "
        head -1 /tmp/dr/tta_load_$mode/metrics.jsonl | python3 -c "import json,sys; s=json.loads(sys.stdin.read())['startup']; \
          print(', '.join('%s %.0f' % (k, 1000 * s['phases'][k]) for k in s['order']))"
      done ;;
    ttavariants)  # issue 24: mnist_fast beside variants (VARIANT_SEEDS each, default 5): timed planning, tf32, and the
      # anchor's network (conv1 at 24 channels, so conv2 runs on cuDNN) timed; each variant's warm planning per layer and plans.json
      sed 's/out_channels: 32, kernel: 5}/out_channels: 24, kernel: 5}/' configs/mnist_fast.yaml > /tmp/dr/fast24.yaml
      variant() {  # NAME CONFIG OVERRIDES...
        local name=$1 cfg=$2; shift 2
        local sets=(); for s in "$@"; do sets+=(--set "$s"); done
        $B/dptrain train --config $cfg --device cuda --out /tmp/dr/var_warm_$name --no-progress "${sets[@]}" > "$OUT/var_warm_$name.log" 2>&1
        echo "== $name: warm-up rc=$?; plans.json: $(head -c 600 /tmp/dr/var_warm_$name/plans.json 2>&1 | tr -d '\n ')"
        python3 bench/time_to_accuracy.py --config $cfg --seeds ${VARIANT_SEEDS:-5} --pytorch none --dptrain $B/dptrain \
          --out /tmp/dr/var_tta_$name "${sets[@]}" > "$OUT/var_tta_$name.log" 2>&1
        echo "$name rc=$?"; tail -1 "$OUT/var_tta_$name.log"
        $B/dptrain train --config $cfg --device cuda --max-steps 1 --no-progress --profile --out /tmp/dr/var_prof_$name "${sets[@]}" \
          > "$OUT/var_prof_$name.log" 2>&1
        sed -n '/^planning: layer/,$p' "$OUT/var_prof_$name.log" | grep -v '^dptrain\|^done' | tr -s ' ' | paste -sd';' | cut -c1-500
      }
      variant shipped configs/mnist_fast.yaml
      variant timed configs/mnist_fast.yaml train.cudnn_benchmark=true
      variant tf32 configs/mnist_fast.yaml train.precision=tf32
      variant anchor24timed /tmp/dr/fast24.yaml train.cudnn_benchmark=true ;;
    firstuse)  # issue 22/24: where warm planning's time goes inside cuDNN (on 2026-12-06 it showed the heuristic query's
      # first call, 124 to 175 ms, fixed in 0d7a90e): each config's recorded plans, then a warm run with cuDNN's API log,
      # its calls with the time since the previous one (gaps over 5 ms marked), beside the planning table
      for cfg in mnist_cnn mnist_fast; do
        $B/dptrain train --config configs/$cfg.yaml --device cuda --max-steps 1 --no-progress --out /tmp/dr/fu_warm_$cfg > /dev/null 2>&1
        echo "== $cfg plans: $(python3 -c "import json; print(json.dumps(json.load(open('/tmp/dr/fu_warm_$cfg/plans.json')))[:1500])" 2>&1)"
        CUDNN_LOGLEVEL_DBG=3 CUDNN_LOGDEST_DBG="$OUT/cudnn_api_$cfg.log" $B/dptrain train --config configs/$cfg.yaml --device cuda \
          --max-steps 1 --no-progress --profile --out /tmp/dr/fu_$cfg > "$OUT/firstuse_$cfg.log" 2>&1
        echo "rc=$?"; sed -n '/^planning: layer/,$p' "$OUT/firstuse_$cfg.log" | grep -v '^dptrain\|^done' | head -14
        python3 - "$OUT/cudnn_api_$cfg.log" <<'PY'
import re, sys, datetime
calls, name = [], None
for line in open(sys.argv[1], errors='replace'):
    m = re.search(r'function (\w+)\(\) called', line)
    if m: name = m.group(1)
    t = re.search(r'Time: (\d{4}-\d\d-\d\dT[\d:.]+)', line)
    if t and name:
        calls.append((name, datetime.datetime.fromisoformat(t.group(1)[:26]))); name = None
print(len(calls), 'cuDNN calls logged')
for i, (n, t) in enumerate(calls[:80]):
    gap = (t - calls[i - 1][1]).total_seconds() * 1000 if i else 0.0
    print('%s %4d %-45s +%.1f ms' % ('>>' if gap > 5 else '  ', i, n, gap))
PY
      done ;;
    abplan)  # issue 21/22: the step and cold planning with the plan cache off: pruned search (default) vs DPTRAIN_PLAN_TIMING=full
      # vs each base build (basebuild first), interleaved, float32 and tf32; the batch-64 choices of each
      for round in 1 2; do for t in float32 tf32; do for v in pruned full /tmp/bases/*/b; do
        if [ -d "$v" ]; then $v/dptrain bench --device cuda --steps 400 --set train.precision=$t > /tmp/dr/abplan.json 2>/dev/null
        else env DPTRAIN_PLAN_TIMING=$v $B/dptrain bench --device cuda --steps 400 --set train.precision=$t \
          --set train.plan_cache=off > /tmp/dr/abplan.json 2>/dev/null; fi
        echo -n "round $round $t $v rc=$?: "; cat /tmp/dr/abplan.json >> "$OUT/abplan.jsonl"
        python3 -c "import json; r=json.load(open('/tmp/dr/abplan.json')); p=r.get('startup', {}).get('phases', {}); \
          print('%.4f ms/step, planning %.0f ms' % (r['ms_per_step'], 1000 * p.get('planning', float('nan')))); \
          [print('   ', c) for c in r['choices'] if 'batch 64' in c]"
      done; done; done ;;
    ttabest)  # issue 24: mnist_best over BEST_SEEDS (default 2) seeds beside PyTorch with the step in a CUDA graph
      python3 bench/time_to_accuracy.py --config configs/mnist_best.yaml --seeds ${BEST_SEEDS:-2} --pytorch ${BEST_PYTORCH:-graph} --dptrain $B/dptrain --out /tmp/dr/tta_best > "$OUT/tta_best.log" 2>&1
      echo "mnist_best rc=$?"; tail -5 "$OUT/tta_best.log" ;;
  esac
done
