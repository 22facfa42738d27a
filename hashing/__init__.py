"""Deep hashing for image retrieval: codes, metrics, models, methods, data, storage, tracking.

Nothing here imports Ray at module level; `pipelines/` composes this library into Ray jobs.
"""
