# bids_spheres BIDS-App image.
#
#   scripts/build-image.sh              docker build when a daemon answers, else buildah bud
#   docker build -t bids_spheres/bids_spheres:0.1.0 .
#
# Build arguments
#   BASE_IMAGE         the Python 3.11 base (default python:3.11-slim); any Debian-like image
#                      with python3 and its venv module works (build-image.sh --debian-base
#                      makes one from Debian packages when Docker Hub is out of reach)
#   TEMPLATEFLOW_FETCH 1 (default): download the TemplateFlow templates the app may use into
#                      /opt/templateflow; 0: ship an empty TEMPLATEFLOW_HOME (no network to
#                      TemplateFlow's S3 bucket; build-image.sh --templateflow-home DIR then adds
#                      a local copy as the last layer)
#   VERSION            the OCI version label (build-image.sh passes pyproject.toml's version)
#   SOURCE_URL         the OCI source label
#
# Runs under `docker run --read-only --tmpfs /tmp` as a non-root user: nothing is written
# outside the output directory (the pybids index goes to OUTPUT_DIR/.work) and /tmp
# (matplotlib's cache, MPLCONFIGDIR). Python files are compiled at build time.

ARG BASE_IMAGE=python:3.11-slim

# ---------------------------------------------------------------- build: the virtualenv
FROM ${BASE_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PIP_CONSTRAINT=/tmp/requirements.lock \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    PYTHONDONTWRITEBYTECODE=1
# pip trusts the system CA bundle (build-image.sh --ca-bundle can replace it for the build).
# Every package at its locked version and nothing else (--no-deps); PIP_CONSTRAINT also pins
# the build tools of the one sdist (docopt); pip check fails the build if the lock misses a
# dependency.
COPY requirements.lock /tmp/requirements.lock
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/python -m pip install --no-deps --use-pep517 -r /tmp/requirements.lock \
    && /opt/venv/bin/python -m pip check
COPY pyproject.toml README.md /src/
COPY bids_spheres /src/bids_spheres
RUN /opt/venv/bin/python -m pip install --no-deps --no-build-isolation /src \
    && /opt/venv/bin/python -m pip check \
    && /opt/venv/bin/bids_spheres --version

# ---------------------------------------------------------------- templates: TemplateFlow
FROM build AS templates
ARG TEMPLATEFLOW_FETCH=1
ENV TEMPLATEFLOW_HOME=/opt/templateflow \
    TEMPLATEFLOW_AUTOUPDATE=0
# MNI152NLin2009cAsym res-01/02 brain mask and T1w, MNI152NLin6Asym res-02 brain mask;
# the build fails if any of them is missing or empty.
RUN mkdir -p /opt/templateflow \
    && if [ "$TEMPLATEFLOW_FETCH" = "1" ]; then \
        /opt/venv/bin/python -c "from pathlib import Path; from templateflow import api; \
wanted = [('MNI152NLin2009cAsym', r, d, s) for r in (1, 2) for d, s in (('brain', 'mask'), (None, 'T1w'))] \
+ [('MNI152NLin6Asym', 2, 'brain', 'mask')]; \
paths = [Path(str(api.get(t, resolution=r, desc=d, suffix=s, extension='.nii.gz'))) for t, r, d, s in wanted]; \
bad = [str(p) for p in paths if not p.is_file() or p.stat().st_size < 10000]; \
assert not bad, f'TemplateFlow download failed: {bad}'; print(*paths, sep='\n')"; \
    else \
        echo "TEMPLATEFLOW_FETCH=$TEMPLATEFLOW_FETCH: no templates fetched"; \
    fi \
    && chmod -R a+rX /opt/templateflow

# ---------------------------------------------------------------- runtime
FROM ${BASE_IMAGE} AS runtime
ARG VERSION=0.1.0
ARG SOURCE_URL=https://github.com/bids_spheres/bids_spheres
LABEL org.opencontainers.image.title="bids_spheres" \
      org.opencontainers.image.description="BIDS-App: denoised sphere (seed) timeseries from fMRIPrep outputs" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"

COPY --from=build /opt/venv /opt/venv
COPY --from=templates /opt/templateflow /opt/templateflow
RUN groupadd --system --gid 1000 bids \
    && useradd --system --uid 1000 --gid bids --create-home --home-dir /home/bids \
        --shell /usr/sbin/nologin bids

ENV PATH=/opt/venv/bin:$PATH \
    LANG=C.UTF-8 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TEMPLATEFLOW_HOME=/opt/templateflow \
    TEMPLATEFLOW_AUTOUPDATE=0 \
    MPLCONFIGDIR=/tmp/matplotlib \
    XDG_CACHE_HOME=/tmp/.cache

USER 1000:1000
WORKDIR /home/bids
ENTRYPOINT ["bids_spheres"]
CMD ["--help"]
