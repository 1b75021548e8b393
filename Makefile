# dicom-gateway: `make demo` runs the stack on this machine, `make test` runs everything CI runs.
# (pytest gets its own --basetemp: pytest prunes old /tmp/pytest-of-* folders, which would pull the sockets and
# objects out from under a long e2e session if another pytest ran on the same machine meanwhile.)
# make test runs the suite in TEST_WORKERS pytest-xdist processes, each given whole test files (--dist loadfile: a
# file's module stacks are started once): most e2e time is waiting (a DELETE's settle, token lifetimes, timeouts), so
# two processes on CI's 2 cores took 19.5 min where one took 30.
TEST_WORKERS ?= 2
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
APT_PACKAGES := nginx libnginx-mod-http-js openssl postgresql chromium orthanc orthanc-dicomweb dcmtk libgdcm-tools dicom3tools tesseract-ocr tesseract-ocr-eng
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: demo demo-deps test lint unit e2e bench bench-quick bench-1m bench-tools system-deps venv viewer dwv ohif clean

# OS packages: installed with apt-get when we are root, otherwise a one-line hint naming them.
system-deps:
	@missing=""; \
	command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing="$$missing nginx"; \
	[ -e /usr/lib/nginx/modules/ngx_http_js_module.so ] || missing="$$missing libnginx-mod-http-js"; \
	command -v openssl >/dev/null || missing="$$missing openssl"; \
	[ -x /usr/lib/postgresql/15/bin/initdb ] || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	command -v chromium >/dev/null || [ -x /usr/bin/chromium ] || missing="$$missing chromium"; \
	command -v node >/dev/null || missing="$$missing nodejs npm"; \
	dpkg -s orthanc >/dev/null 2>&1 || missing="$$missing orthanc"; \
	dpkg -s orthanc-dicomweb >/dev/null 2>&1 || missing="$$missing orthanc-dicomweb"; \
	dpkg -s dcmtk >/dev/null 2>&1 || missing="$$missing dcmtk"; \
	dpkg -s libgdcm-tools >/dev/null 2>&1 || missing="$$missing libgdcm-tools"; \
	dpkg -s dicom3tools >/dev/null 2>&1 || missing="$$missing dicom3tools"; \
	command -v tesseract >/dev/null || missing="$$missing tesseract-ocr"; \
	dpkg -s tesseract-ocr-eng >/dev/null 2>&1 || missing="$$missing tesseract-ocr-eng"; \
	command -v strace >/dev/null || missing="$$missing strace"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing OS packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	    case "$$missing" in *orthanc*) \
	      systemctl disable --now orthanc >/dev/null 2>&1 || service orthanc stop >/dev/null 2>&1 || true;; \
	    esac; \
	  else \
	    echo "missing OS packages:$$missing (install them with: sudo apt-get install$$missing)"; \
	  fi; \
	fi

demo-deps:
	@missing=""; \
	command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing="$$missing nginx"; \
	[ -e /usr/lib/nginx/modules/ngx_http_js_module.so ] || missing="$$missing libnginx-mod-http-js"; \
	command -v npm >/dev/null || missing="$$missing nodejs npm"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq$$missing >/dev/null; \
	  else echo "missing:$$missing (sudo apt-get install$$missing; the viewer build needs Node.js 20 or newer)"; exit 1; fi; \
	fi

# Debian and Ubuntu ship python3 without venv's pip (the python3-venv package): installed with apt-get when root,
# otherwise a one-line hint (python3 -m venv failed there after a paragraph of its own).
$(VENV)/.installed: pyproject.toml
	@python3 -m venv $(VENV) >/dev/null 2>&1 || { rm -rf $(VENV); \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing OS packages: python3-venv"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null; \
	  else echo "missing OS package: python3-venv (install it with: sudo apt-get install python3-venv)"; exit 1; fi; }
	@[ -x $(VENV)/bin/python ] || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

.venv-checkov/.installed:
	python3 -m venv .venv-checkov
	.venv-checkov/bin/pip install -q 'checkov>=3,<4'
	touch $@

# Vite 7 needs Node 20.19+ or 22.12+: on an older one (Debian 12's nodejs is 18) it only warns, then the build dies in
# a stack trace (crypto.hash is not a function); say so in one line before npm runs.
viewer/dist/index.html: viewer/package.json viewer/package-lock.json viewer/vite.config.js $(shell find viewer/src -type f 2>/dev/null) viewer/index.html
	@node -e 'const [a, b] = process.versions.node.split(".").map(Number); process.exit((a === 20 && b >= 19) || (a === 22 && b >= 12) || a > 22 ? 0 : 1)' 2>/dev/null || { \
	  echo "the viewer build needs Node.js 20.19+ or 22.12+ (Vite 7), this machine has $$(node -v 2>/dev/null || echo none): install one from NodeSource or your distribution (Debian 12's nodejs is 18)"; exit 1; }
	cd viewer && npm ci --no-audit --no-fund --loglevel=error && npm run build

viewer: viewer/dist/index.html

# DWV, unmodified, for the third-party clients suite (tests/e2e/test_third_party_dwv.py).
tests/e2e/dwv/node_modules/.package-lock.json: tests/e2e/dwv/package.json tests/e2e/dwv/package-lock.json
	cd tests/e2e/dwv && npm ci --no-audit --no-fund --loglevel=error

dwv: tests/e2e/dwv/node_modules/.package-lock.json

# OHIF's DICOMweb client (dicomweb-client) and dcmjs, unmodified, for tests/e2e/test_ohif_client.py.
tests/e2e/ohif/node_modules/.package-lock.json: tests/e2e/ohif/package.json tests/e2e/ohif/package-lock.json
	cd tests/e2e/ohif && npm ci --no-audit --no-fund --loglevel=error

ohif: tests/e2e/ohif/node_modules/.package-lock.json

demo: demo-deps venv viewer
	$(VENV)/bin/dicom-gateway stack up

lint: venv
	$(VENV)/bin/ruff check gateway tests bench docker
	$(VENV)/bin/mypy

test: system-deps venv .venv-checkov/.installed viewer dwv ohif lint
	DICOMGW_TEST_REQUIRE_ALL=1 $(VENV)/bin/pytest -p no:cacheprovider --basetemp=$(CURDIR)/.pytest-tmp \
	  -n $(TEST_WORKERS) --dist loadfile --durations=15 tests; status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests: failing on purpose"; exit 1; fi; exit $$status

unit: venv
	$(VENV)/bin/pytest tests/unit

e2e: venv viewer dwv ohif
	$(VENV)/bin/pytest tests/e2e

bench-tools: venv
	@command -v wrk >/dev/null || { if [ "$$(id -u)" = 0 ]; then apt-get install -y -qq wrk >/dev/null; else echo "wrk is missing: sudo apt-get install wrk"; exit 1; fi; }

# B1-B7 (B4 against Orthanc, B5 at 100,000 studies on SQLite and PostgreSQL)
bench: bench-tools
	$(PY) -m bench.run

# the short forms of B2, B4 and B5 (a few minutes)
bench-quick: bench-tools
	$(PY) -m bench.run --quick

# B5 at 1,000,000 studies on SQLite and PostgreSQL (fills take minutes; the SQLite catalog is ~1.8 GB)
bench-1m: venv
	$(PY) -m bench.b5_qido --studies 1000000

clean:
	rm -rf var .venv .venv-checkov viewer/node_modules viewer/dist tests/e2e/dwv/node_modules tests/e2e/ohif/node_modules
