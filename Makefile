# The two commands a fresh machine needs: `make demo` and `make test`. Both set up .venv first.
VENV := .venv
PY := $(VENV)/bin/python
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup demo demo-quick test bench gpu-check clean

setup: $(VENV)/.installed $(FMNIST)

$(FMNIST):
	$(SUDO) apt-get install -y dataset-fashion-mnist || ($(SUDO) apt-get update && $(SUDO) apt-get install -y dataset-fashion-mnist)

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e ".[test]"
	touch $@

demo: setup
	$(PY) cli.py demo

demo-quick: setup
	$(PY) cli.py demo --quick

test: setup
	$(PY) -m pytest

bench: setup
	$(PY) bench/stage2_throughput.py --pair fmnist
	$(PY) bench/stage2_throughput.py --pair cifar
	$(PY) bench/stage1_throughput.py --pair cifar
	$(PY) bench/sweep_amortization.py --pair cifar
	$(PY) bench/sweep_overhead.py

# on a CUDA machine (no setup: DALI is not needed there); without CUDA it prints one line and exits 0
gpu-check:
	$(PY) bench/gpu_check.py

clean:
	rm -rf runs .pytest_cache
