"""Environment variables tensorslim reads (the lowest layer: imports nothing)."""

#: "1" in pregenerate's pool workers: `import tensorslim` then skips torch and transformers, which
#: the workers do not need (seconds and hundreds of MB per process).
DATA_WORKER_ENV = "TENSORSLIM_DATA_WORKER"
