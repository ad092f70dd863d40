# bids_spheres BIDS-App image.
#
#   scripts/build-image.sh              docker build when a daemon answers, else buildah bud
#   docker build -t bids_spheres/bids_spheres:0.1.0 .
#
# Build arguments
#   BASE_IMAGE         the Python 3.11 base, pinned by digest (python:3.11-slim@sha256:...);
#                      any Debian-like image with python3 and its venv module works
#                      (build-image.sh --debian-base makes one from Debian packages when
#                      Docker Hub is out of reach)
#   TEMPLATEFLOW_FETCH 1 (default): download the TemplateFlow templates listed in
#                      scripts/image/templates.sha256 into /opt/templateflow and check their
#                      sha256; 0: ship an empty TEMPLATEFLOW_HOME (build-image.sh then tags
#                      the image <tag>-notemplates; --templateflow-home DIR adds a checked
#                      local copy as the last layer instead)
#   VERSION            the OCI version label (build-image.sh passes pyproject.toml's version)
#   CREATED, REVISION  the OCI created (RFC 3339 date) and revision (git commit) labels
#   CONTAINER_TAG      the image's own name:tag, in BIDS_SPHERES_CONTAINER_TAG (provenance)
#   SOURCE_URL         the OCI source label
#
# The runtime holds no pip, setuptools or wheel and none of the packages' tests/ folders.
# Runs under `docker run --read-only --tmpfs /tmp` as a non-root user: nothing is written
# outside the output directory (the pybids index goes to OUTPUT_DIR/.work) and /tmp
# (matplotlib's cache, MPLCONFIGDIR). Python files are compiled at build time.

ARG BASE_IMAGE=python:3.11-slim@sha256:9c900dea9e8fb7e16277c179b555cc72d29a352dbc33cff48ad5a0412fd5bfc7

# ---------------------------------------------------------------- build: the virtualenv
FROM ${BASE_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    PYTHONDONTWRITEBYTECODE=1
# binutils' strip, for the debug sections of the packages' extension modules (this stage
# only; the runtime stage copies the virtualenv, not the tools).
# hadolint ignore=DL3008
RUN apt-get update -qq \
    && apt-get install -y -qq --no-install-recommends binutils >/dev/null \
    && rm -rf /var/lib/apt/lists/*
# pip trusts the system CA bundle (build-image.sh --ca-bundle can replace it for the build).
# Every package at its locked version, each file checked against the lock's sha256
# (--require-hashes), and nothing else (--no-deps): first the lock's build tools (pip,
# setuptools, wheel), with which the one sdist (docopt) is then built (--no-build-isolation:
# no unpinned build dependency is fetched); pip check fails the build if the lock misses a
# dependency.
COPY requirements.lock /tmp/requirements.lock
RUN python3 -m venv /opt/venv \
    && sed -n '/^# build tools/,$p' /tmp/requirements.lock > /tmp/build-tools.lock \
    && /opt/venv/bin/python -m pip install --require-hashes --no-deps -r /tmp/build-tools.lock \
    && /opt/venv/bin/python -m pip install --require-hashes --no-deps --no-build-isolation -r /tmp/requirements.lock \
    && /opt/venv/bin/python -m pip check
COPY pyproject.toml README.md /src/
COPY bids_spheres /src/bids_spheres
# The package, then what the runtime does not need: pip, setuptools, wheel, every package's
# tests/ folder and the debug sections of extension modules (strip --strip-debug; the
# libraries auditwheel vendored in *.libs/ are left alone: stripping breaks their
# patchelf'd layout); the app must still import, run the demo and find no pip.
RUN /opt/venv/bin/python -m pip install --no-deps --no-build-isolation /src \
    && /opt/venv/bin/python -m pip check \
    && /opt/venv/bin/python -m pip uninstall --yes pip setuptools wheel \
    && find /opt/venv -depth -type d -name tests -exec rm -rf {} + \
    && find /opt/venv -type f -name "*.so*" -not -path "*.libs/*" -exec strip --strip-debug {} + \
    && rm -rf /opt/venv/bin/pip* /opt/venv/bin/wheel /src \
    && if /opt/venv/bin/python -c "import pip" 2>/dev/null; then exit 1; fi \
    && /opt/venv/bin/python -c "import bids, distributed, matplotlib.pyplot, scipy.signal, templateflow.api" \
    && /opt/venv/bin/bids_spheres --version \
    && MPLCONFIGDIR=/tmp/mpl TEMPLATEFLOW_HOME=/tmp/tf TEMPLATEFLOW_AUTOUPDATE=0 \
        /opt/venv/bin/bids_spheres-demo /tmp/demo >/dev/null \
    && rm -rf /tmp/demo /tmp/mpl /tmp/tf

# ---------------------------------------------------------------- templates: TemplateFlow
FROM build AS templates
ARG TEMPLATEFLOW_FETCH=1
ENV TEMPLATEFLOW_HOME=/opt/templateflow \
    TEMPLATEFLOW_AUTOUPDATE=0
# MNI152NLin2009cAsym res-01/02 brain mask and T1w, MNI152NLin6Asym res-02 brain mask; the
# build fails if any of them is missing or its sha256 is not the one in templates.sha256.
COPY scripts/image/templates.py scripts/image/templates.sha256 /tmp/image/
RUN mkdir -p /opt/templateflow \
    && if [ "$TEMPLATEFLOW_FETCH" = "1" ]; then \
        /opt/venv/bin/python /tmp/image/templates.py fetch /opt/templateflow /tmp/image/templates.sha256; \
    else \
        echo "TEMPLATEFLOW_FETCH=$TEMPLATEFLOW_FETCH: no templates fetched"; \
    fi \
    && chmod -R a+rX /opt/templateflow

# ---------------------------------------------------------------- runtime
FROM ${BASE_IMAGE} AS runtime
ARG VERSION=0.1.0
ARG CREATED=unknown
ARG REVISION=unknown
ARG CONTAINER_TAG=bids_spheres/bids_spheres:${VERSION}
ARG TEMPLATEFLOW_FETCH=1
ARG SOURCE_URL=https://github.com/bids_spheres/bids_spheres
LABEL org.opencontainers.image.title="bids_spheres" \
      org.opencontainers.image.description="BIDS-App: denoised sphere (seed) timeseries from fMRIPrep outputs" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.bids_spheres.templateflow-fetch="${TEMPLATEFLOW_FETCH}"

COPY --from=build /opt/venv /opt/venv
COPY --from=templates /opt/templateflow /opt/templateflow
# The base's own pip and setuptools go too (python:3.11-slim ships them in /usr/local).
RUN (python3 -m pip uninstall --yes pip setuptools wheel >/dev/null 2>&1 || true) \
    && rm -rf /usr/local/bin/pip* /usr/share/python-wheels \
    && groupadd --system --gid 1000 bids \
    && useradd --system --uid 1000 --gid bids --create-home --home-dir /home/bids \
        --shell /usr/sbin/nologin bids

ENV PATH=/opt/venv/bin:$PATH \
    LANG=C.UTF-8 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TEMPLATEFLOW_HOME=/opt/templateflow \
    TEMPLATEFLOW_AUTOUPDATE=0 \
    MPLCONFIGDIR=/tmp/matplotlib \
    XDG_CACHE_HOME=/tmp/.cache \
    BIDS_SPHERES_CONTAINER_TYPE=docker \
    BIDS_SPHERES_CONTAINER_TAG=${CONTAINER_TAG}

USER 1000:1000
WORKDIR /home/bids
ENTRYPOINT ["bids_spheres"]
CMD ["--help"]
