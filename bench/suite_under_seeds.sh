#!/usr/bin/env bash
# The tests that assert a verify, replay or demo verdict, under torch at 1 and 2 threads and three
# seeds of their random data (HARDEN_TEST_THREADS, HARDEN_TEST_SEED: tests/conftest.py): no test's
# outcome may rest on one lucky sample or one summation order (issue 45). Prints one line per run
# and pytest's closing line; about 8 minutes a run on 2 cores.
#
#   bash bench/suite_under_seeds.sh [PYTEST_ARGS...]
set -uo pipefail
cd "$(dirname "$0")/.."
TESTS=(tests/test_verify.py tests/test_verdicts.py tests/test_replay.py tests/test_demo.py
       tests/test_external_models.py tests/test_bring_your_own.py tests/test_verify_resume.py
       tests/test_report_render.py tests/test_arithmetic.py tests/test_inlined_bodies.py tests/test_gates.py
       tests/test_folder_data.py)
for threads in 1 2; do
  for seed in 0 1 2; do
    start=$(date +%s)
    line=$(HARDEN_TEST_THREADS=$threads HARDEN_TEST_SEED=$seed .venv/bin/pytest -q -p no:cacheprovider \
           "${TESTS[@]}" "$@" 2>&1 | tee "/tmp/suite-t${threads}-s${seed}.log" | tail -1)
    echo "threads $threads, seed $seed: $line ($(( $(date +%s) - start )) s)"
  done
done
