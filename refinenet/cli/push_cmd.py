"""``refinenet push FOLDER --repo-id ORG/NAME``: publish a model folder on the Hugging Face Hub.

The folder is loaded strictly before anything is uploaded. After the push, the command prints
the repo id, commit and sha256 to record in the zoo entry (``refinenet/zoo.py``). ``--dry-run``
checks the folder and lists what would be uploaded without contacting the Hub.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "folder", metavar="FOLDER", type=Path, help="model folder (config.json, model.safetensors, README.md)"
    )
    parser.add_argument("--repo-id", required=True, help="target repository, ORG/NAME")
    parser.add_argument("--revision", default=None, help="branch to push to (created if missing; default: main)")
    parser.add_argument("--private", action="store_true", default=None, help="create the repository as private")
    parser.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN or the `hf auth login` token)")
    parser.add_argument("--message", default=None, help="commit message")
    parser.add_argument("--dry-run", action="store_true", help="check the folder and show the plan; upload nothing")


def run(args: argparse.Namespace) -> int:
    from huggingface_hub.errors import HfHubHTTPError

    from refinenet.folder import WeightsError
    from refinenet.hub import push_to_hub

    try:
        result = push_to_hub(
            args.folder,
            args.repo_id,
            revision=args.revision,
            private=args.private,
            token=args.token,
            commit_message=args.message,
            dry_run=args.dry_run,
        )
    except (WeightsError, ValueError, OSError, HfHubHTTPError) as error:
        print(f"error: cannot push {args.folder}: {error}", file=sys.stderr)
        return 1
    if result.dry_run:
        print(
            f"dry run: would upload {', '.join(result.files)} from {args.folder} to {result.repo_id} "
            f"(branch {result.revision}); model.safetensors sha256 {result.sha256}"
        )
        return 0
    print(f"pushed {args.folder} to {result.repo_id}@{result.revision}: commit {result.commit}")
    if result.url:
        print(f"  {result.url}")
    print(f"zoo entry fields: {result.zoo_fields()}")
    return 0
