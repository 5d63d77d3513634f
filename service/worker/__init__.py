"""The worker: loaded models, per-session state, dynamic batching."""
