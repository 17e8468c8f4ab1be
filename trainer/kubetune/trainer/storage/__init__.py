"""Where bytes come from and go to: URIs of models, datasets and outputs.

``uris`` parses and resolves; ``fetch`` brings a model or a data file into the local
cache; ``publish`` writes a finished artifact folder to its output URI.
"""
