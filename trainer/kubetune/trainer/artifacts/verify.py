"""`kubetune artifacts verify URI`: re-hash an output against its manifest.

Every answer is a list of one-line problems (empty when every file matches): a bad URI, a missing
or malformed manifest, an entry outside the artifact, an unreachable endpoint or missing
credentials are problems too, never a traceback.
"""

from __future__ import annotations

from pathlib import Path

from kubetune.trainer.artifacts.manifest import verify_dir
from kubetune.trainer.errors import TrainerError
from kubetune.trainer.storage.uris import Uri, file_path


def verify_uri(uri: str) -> list[str]:
    try:
        if "://" not in uri:
            return verify_dir(Path(uri))
        scheme = Uri.parse(uri, field="URI").scheme
        if scheme == "file":
            return verify_dir(file_path(uri))
        from kubetune.trainer.storage.s3_verify import verify_remote  # imports boto3 when it runs

        return verify_remote(uri)
    except TrainerError as exc:
        return [str(exc)]
    except OSError as exc:  # a folder that cannot be listed, a file that vanished while hashing
        return [f"cannot read the artifact: {exc.strerror or exc}"]
