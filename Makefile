# Two entry points for a fresh Debian 12 machine, run as root (see README.md):
#   make run    install everything, start a Docker engine if none runs, and run
#               the plug-in (Docker driver + CNI daemon) in the foreground
#   make test   install everything the tests need and run every test layer
PYTHON       ?= /usr/bin/python3
VENV         ?= /opt/rancher-cni/venv
CNI_BIN_DIR  ?= /opt/cni/bin
TEST_VENV    ?= $(CURDIR)/.venv
SOURCES      := setup.cfg pyproject.toml $(shell find cnm_shim cni_backend -name '*.py')
DEB_PACKAGES := python3-venv iproute2 iptables nftables iputils-ping busybox-static \
                docker.io containerd containernetworking-plugins ebtables iperf3 etcd-server \
                debootstrap docker-registry wget systemd \
                strongswan-charon strongswan-swanctl libcharon-extra-plugins strace
PLUGIN       ?= rancher-cni
PLUGIN_BUILD ?= $(CURDIR)/build/plugin
REGISTRY     ?= localhost:5000

.PHONY: deps install engine plugin registry plugin-push run prefetch test test-unit test-etcd test-netns test-interop test-engine test-multihost rig bench clean

deps:  ## Debian packages (installed only when missing)
	@missing=$$(for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing: $$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

$(VENV)/.installed: $(SOURCES)
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q .
	touch $@

install: deps $(VENV)/.installed  ## the virtualenv in /opt/rancher-cni and the CNI executables
	$(VENV)/bin/cnm-shim install-cni --dir $(CNI_BIN_DIR)

engine: deps  ## a Docker engine, if none runs
	@docker version >/dev/null 2>&1 || { echo "starting dockerd (log: /var/log/rancher-dockerd.log)"; \
	  systemctl start docker 2>/dev/null || (nohup dockerd >/var/log/rancher-dockerd.log 2>&1 &); \
	  for i in $$(seq 100); do docker version >/dev/null 2>&1 && break; sleep 0.2; done; }

run: install engine  ## a Docker engine if none runs, then the plug-in in the foreground
	exec $(VENV)/bin/cnm-shim serve

# the bundle (config.json + rootfs), rebuilt only when the project changed
$(PLUGIN_BUILD)/config.json: $(SOURCES) plugin.json $(wildcard packaging/*.sh) | deps $(VENV)/.installed
	packaging/build-plugin.sh $(PLUGIN_BUILD) $(VENV)/bin/pip

plugin: deps engine $(PLUGIN_BUILD)/config.json  ## the managed plug-in $(PLUGIN), built from Debian's packages, enabled
	packaging/plugin.sh install $(PLUGIN) $(PLUGIN_BUILD)

registry: deps  ## Debian's docker-registry on $(REGISTRY)
	packaging/registry.sh $(REGISTRY)

plugin-push: deps engine registry $(PLUGIN_BUILD)/config.json  ## build the plug-in, push it to $(REGISTRY)/$(PLUGIN)
	packaging/plugin.sh push $(REGISTRY)/$(PLUGIN) $(PLUGIN_BUILD)

$(TEST_VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(TEST_VENV)
	$(TEST_VENV)/bin/pip install -q --upgrade pip
	$(TEST_VENV)/bin/pip install -q -e '.[test]'
	touch $@

# Tests and benchmarks run in a private network and mount namespace
# (tests/sandbox.sh): a plug-in serving this machine's Docker keeps its
# sockets, state, CNI config and rules, and the tests start from a fresh
# machine's sysctls whatever this one has. Only loopback exists in there, so
# what needs the network (Debian's archive, PyPI) is fetched first (prefetch).
SANDBOX      := tests/sandbox.sh
PYTEST       := $(SANDBOX) $(TEST_VENV)/bin/python -m pytest -ra

prefetch: deps $(TEST_VENV)/.installed  ## the Debian root file systems and wheels the sandboxed tests build from
	packaging/prefetch.sh $(TEST_VENV)/bin/pip

test: deps $(TEST_VENV)/.installed prefetch  ## every layer: unit, etcd, netns, interop, engine, multihost
	$(PYTEST) tests

test-unit: $(TEST_VENV)/.installed
	$(TEST_VENV)/bin/python -m pytest -ra tests/unit

test-netns: deps $(TEST_VENV)/.installed
	$(PYTEST) tests/netns

test-interop: deps $(TEST_VENV)/.installed
	$(PYTEST) tests/interop

test-etcd: deps $(TEST_VENV)/.installed
	$(PYTEST) tests/etcd

test-engine: deps $(TEST_VENV)/.installed prefetch
	$(PYTEST) tests/engine

test-multihost: deps $(TEST_VENV)/.installed prefetch
	$(PYTEST) tests/multihost

rig: deps $(TEST_VENV)/.installed  ## three Docker hosts on this machine until Ctrl-C (see docs/multi-host.md)
	$(TEST_VENV)/bin/python -m tests.multihost.rig 3

bench: deps $(TEST_VENV)/.installed  ## ours against the references, same run, each in the sandbox
	$(SANDBOX) $(TEST_VENV)/bin/python bench/cni_add_del.py
	$(SANDBOX) $(TEST_VENV)/bin/python bench/docker_run.py
	$(SANDBOX) $(TEST_VENV)/bin/python bench/driver_path.py
	$(SANDBOX) $(TEST_VENV)/bin/python bench/flat_throughput.py --rounds 20
	$(SANDBOX) $(TEST_VENV)/bin/python bench/flat_throughput.py --rounds 10 --congestion cubic
	$(SANDBOX) $(TEST_VENV)/bin/python bench/vxlan_throughput.py --rounds 10
	$(SANDBOX) $(TEST_VENV)/bin/python bench/ipsec_throughput.py --rounds 6
	$(SANDBOX) $(TEST_VENV)/bin/python bench/load.py

clean:
	rm -rf $(TEST_VENV) build *.egg-info

.PHONY: compare
compare: deps $(TEST_VENV)/.installed  ## CNM vs CNI, each backend, on a private engine in a sandbox (docs/cnm-vs-cni.md)
	$(SANDBOX) $(TEST_VENV)/bin/python bench/compare_rig.py --backends bridge,flat,vxlan -n 10 --out docs/compare
