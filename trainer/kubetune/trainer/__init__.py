"""kubetune.trainer: the code that runs inside a training pod (and under `kubetune run`).

Heavy imports (torch, transformers, trl) stay inside functions so that importing this
package is cheap.
"""
