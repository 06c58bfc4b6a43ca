# One image for every process of the pipeline; docker-compose.yml picks the command.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin app

# Dependencies first, in their own layer: it is rebuilt only when pyproject.toml changes.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

COPY README.md ./
COPY shared ./shared
COPY auth_service ./auth_service
COPY member_service ./member_service
COPY batch_service ./batch_service
# The operator commands (status, trace, dlt); the developer tools and the bench stay out.
COPY operations ./operations
RUN pip install --no-deps . && rm -rf build *.egg-info

USER app
EXPOSE 8001 8002 8003 8080
CMD ["python", "-m", "auth_service", "api", "--host", "0.0.0.0"]
