"""The analyses: each composes the engine (runner, reducers), the probe (taps) and the pure maths
(ops) into results for built models and an image source. Nothing here reads files, writes
outputs or draws: pipelines and reports do."""
