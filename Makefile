# imitkd-ast: two commands do all set-up on a fresh machine
#   make demo   # builds the offline DDTP-ST corpus, trains an ASR model, an NMT expert and six students, prints a table
#   make test   # runs the whole test suite
VENV   ?= .venv
PYTHON ?= python3
PY      = $(VENV)/bin/python

.PHONY: setup system-deps test test-fast demo bench bench-tables bench-profile gpu-check clean

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements.txt
	$(VENV)/bin/pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

# espeak-ng (Debian main) synthesises the demo/test speech; flite (Debian main) the test sentences of
# test_unseen_engine (speech from a synthesiser that no training utterance comes from)
system-deps:
	@command -v espeak-ng >/dev/null 2>&1 || { echo "installing espeak-ng (Debian package)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng >/dev/null; }
	@command -v flite >/dev/null 2>&1 || { echo "installing flite (Debian package)"; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq flite >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq flite >/dev/null; }; }
	@test -f /usr/share/dict/american-english || { echo "installing wamerican (Debian word list: the demo's plain-English filter)"; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wamerican >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wamerican >/dev/null; }; }

setup: $(VENV)/.installed system-deps

# TEST_WORKERS pytest-xdist workers (one per core), each test's torch (and the CLIs it runs) on one thread;
# an idle worker takes tests queued for the other (worksteal); the 15 slowest tests are listed at the end
TEST_WORKERS ?= 2
test: setup
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal --durations 15

test-fast: setup
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal -m "not slow"

demo: setup
	$(PY) examples/imitkd/run_demo.py --size small --out demo

bench: setup
	$(PY) benchmarks/train_step.py

# the CPU tables of benchmarks/README.md (one per CPU class): one thread, then two, every mode twice
bench-tables: setup
	$(PY) benchmarks/train_step.py --repeats 2 --threads 1
	$(PY) benchmarks/train_step.py --repeats 2 --threads 2

# where an update's time goes (rollout encoder pass, decoding, expert, loss), β = 0 against NLL
bench-profile: setup
	$(PY) benchmarks/profile_step.py --threads 1 --modes nll,imit_kd_CE@0,imit_kd@0

# on a CUDA machine with the pinned packages (GPU_PY: its python, default the venv's): the CUDA smoke
# tests first (a failure does not stop the benchmark), then the benchmark table in bf16 autocast
# with rollouts decoded by GPU_DECODING (cached, cuda-graph or fairseq); GPU_BENCH: more benchmark
# flags, e.g. GPU_BENCH="--modes nll,word_kd,imit_kd_CE@1,imit_kd_CE@0,reference@0"
GPU_PY ?= $(PY)
GPU_DECODING ?= cuda-graph
gpu-check:
	-$(GPU_PY) -m pytest -q -rs tests/test_cuda.py
	$(GPU_PY) benchmarks/train_step.py --device cuda --bf16 --rollout-decoding $(GPU_DECODING) $(GPU_BENCH)

clean:
	rm -rf $(VENV) demo .pytest_cache
