# Set-up is idempotent: `make demo` and `make test` each create .venv, install everything
# (torch first, pinned to the CPU build) and the Fashion-MNIST Debian package when missing.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FMNIST_DIR ?= $(or $(COMPRESSOR_FASHION_MNIST),/usr/share/datasets/fashion-mnist)
FMNIST := $(FMNIST_DIR)/t10k-labels-idx1-ubyte.gz
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup demo test bench paper train train-lenet clean

setup: $(STAMP) $(FMNIST)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	# torch first and exactly 2.13.0 (the CPU build): anything else pulls GBs of CUDA packages
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

$(FMNIST):
	@echo "Fashion-MNIST missing in $(FMNIST_DIR): installing Debian package dataset-fashion-mnist"
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq dataset-fashion-mnist
	@test -f $@ || { echo "dataset-fashion-mnist installed but $@ is missing; set COMPRESSOR_FASHION_MNIST"; exit 1; }

demo: setup
	mkdir -p build
	$(VENV)/bin/compress models/paper_mlp.pt --arch models.mlp:paper_mlp \
		--target 0.85 --data fashion-mnist -o build/paper_mlp.compressed.onnx

# Two test processes on the two cores, one torch thread each (two threads each would fight
# over the cores).
test: setup
	OMP_NUM_THREADS=1 $(PY) -m pytest -n 2

# benchmarks/results.md (compress with fine-tuning), benchmarks/schedule.md (fixed epochs or
# --recover, 3 seeds; about 15 minutes), benchmarks/one_shot.md (no fine-tuning),
# benchmarks/ranking.md (--criterion error on wide layers, exact and blocked; about 3 minutes),
# benchmarks/sparse.md (single weights, CSR, int8, compress bench; about 30 minutes) and
# benchmarks/cnn.md (VGG-BN and ResNet against Torch-Pruning, the bench extra; about 70 minutes),
# benchmarks/vision.md (torchvision's ResNet-18 and MobileNetV3-small, trained, likewise)
# and benchmarks/transformer.md (ViT and ViT-SwiGLU FFNs against Torch-Pruning; about 50 minutes),
# benchmarks/widths.md (ViTs 192, 384 and 768 wide: runtime against FLOPs; about 15 minutes),
# benchmarks/seeds.md (the fine-tuned ViT, ViT-SwiGLU and ResNet-18 rows over three seeds; cells
# of other seeds already in the table are kept; about 160 minutes),
# benchmarks/threads.md (torch threads alone and beside busy processes; about an hour),
# benchmarks/scale.md (peak memory against samples streamed from a Dataset; fine-tuning in one
# and two processes), benchmarks/zoo.md (every torchvision classifier at 50% fewer FLOPs
# against Torch-Pruning; about three hours) and benchmarks/zoo_timm.md (timm's mobile and hybrid
# classifiers likewise; about 20 minutes).
bench: setup models/resnet18_fmnist.pt
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) -m benchmarks.run
	$(PY) -m benchmarks.schedule
	$(PY) -m benchmarks.one_shot
	$(PY) -m benchmarks.ranking
	$(PY) -m benchmarks.sparse
	$(PY) -m benchmarks.cnn
	$(PY) -m benchmarks.cnn --models resnet18_fmnist,mobilenet_v3_small_fmnist \
		--out benchmarks/vision.md
	$(PY) -m benchmarks.transformer
	$(PY) -m benchmarks.widths
	$(PY) -m benchmarks.seeds
	$(PY) -m benchmarks.threads
	$(PY) -m benchmarks.scale
	$(PY) -m benchmarks.zoo
	$(PY) -m benchmarks.zoo --zoo timm

# benchmarks/paper.md and benchmarks/paper/*.png: the activation-based pruning paper's tables and
# figures on the shipped paper MLP, with a verdict on each claim (about 15 minutes on 2 cores).
paper: setup
	$(PY) -m pip install --quiet -e '.[plots]'
	$(PY) -m benchmarks.paper

# Re-train the shipped example weights: the paper MLP (about 40 s on 2 cores), the VGG-style
# CNN and the ResNet (about 5.5 minutes each), the ViT and its SwiGLU variant (about 5 minutes
# each), torchvision's ResNet-18 and MobileNetV3-small, the token-id text classifier
# (models/text.pt); `make train-lenet`: LeNet-300-100 with the neuron-merging paper's recipe
# (about 4 minutes).
train: setup
	$(PY) -m models.train
	$(PY) -m models.train --arch vgg_bn --recipe cnn --out models/vgg_bn.pt
	$(PY) -m models.train --arch resnet --recipe cnn --out models/resnet.pt
	$(PY) -m models.train --arch vit --recipe transformer --out models/vit.pt
	$(PY) -m models.train --arch vit_swiglu --recipe transformer --out models/vit_swiglu.pt
	$(PY) -m models.train --arch resnet18_fmnist --recipe vision --out models/resnet18_fmnist.pt
	$(PY) -m models.train --arch mobilenet_v3_small_fmnist --recipe vision \
		--out models/mobilenet_v3_small_fmnist.pt
	$(PY) -m models.train --arch text --recipe text --out models/text.pt

# ResNet-18's weights (45 MB) are not in the repository: trained when a benchmark needs them
# (about 25 minutes on 2 cores).
models/resnet18_fmnist.pt: | setup
	$(PY) -m models.train --arch resnet18_fmnist --recipe vision --out $@

train-lenet: setup
	$(PY) -m models.train --arch lenet_300_100 --recipe merging --out models/lenet_300_100.pt

clean:
	rm -rf build .pytest_cache
