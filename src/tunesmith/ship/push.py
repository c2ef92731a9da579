"""`tunesmith push CONFIG --repo user/name`: the model folder (with its card), and the GGUF files
and Modelfile from `export`, to a Hugging Face Hub repository in one commit, private by default.

Nothing is created or uploaded until the token is found and the Hub has answered; without a
network the command ends with one message before doing anything.
"""
from __future__ import annotations

import sys
from pathlib import Path

from tunesmith.config.schema import Config
from tunesmith.errors import ModelError, TunesmithError
from tunesmith.ship.card import HUB_ID, write_card


class PushError(TunesmithError):
    """The Hub cannot be reached, or refuses the token or the repository."""


def network_errors() -> tuple[type[Exception], ...]:
    """What the Hub client raises when it cannot get an answer: OSError kinds (offline mode, HTTP
    errors) and its HTTP library's transport errors, which are not OSErrors."""
    from huggingface_hub import errors

    return (OSError, getattr(errors, "HTTPError", OSError))


def model_folder(cfg: Config, folder: str | None = None) -> Path:
    """merged/ when there is one (a plain model runs anywhere), else final/."""
    out = Path(cfg.resolved_output_dir())
    chosen = Path(folder) if folder else next((p for p in (out / "merged", out / "final") if (p / "config.json").is_file()
                                               or (p / "adapter_config.json").is_file()), None)
    if chosen is None or not chosen.is_dir():
        raise ModelError(f"nothing to push: no {folder or out / 'final'} folder", "train first (`tunesmith train CONFIG`) or pass --folder")
    return chosen


def files_to_push(cfg: Config, folder: Path) -> dict[str, Path]:
    """path in the repo -> local file: the model folder, plus export/ (GGUF, Modelfile) when present."""
    files = {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*"))
             if p.is_file() and not p.name.startswith(".")}
    export = Path(cfg.resolved_output_dir()) / "export"
    for p in sorted(export.glob("*")) if export.is_dir() else []:
        if p.is_file() and not p.name.startswith("."):
            files[p.name] = p
    return files


def push(cfg: Config, repo: str, folder: str | None = None, public: bool = False, endpoint: str | None = None) -> str:
    from huggingface_hub import CommitOperationAdd, HfApi, get_token

    if not HUB_ID.match(repo):
        raise PushError(f"--repo {repo!r}: not a repository id", "write it as user/name or org/name")
    source = model_folder(cfg, folder)
    token = get_token()
    if token is None:
        raise PushError("no Hugging Face token found",
                        "run `hf auth login`, or set HF_TOKEN to a token with write access")
    api = HfApi(endpoint=endpoint, token=token)
    try:  # the first call: proves the network, the endpoint and the token before anything is written
        user = api.whoami()["name"]
    except network_errors() as e:  # offline mode, no route, refused token: all end here, nothing written
        raise PushError(f"cannot reach the Hugging Face Hub at {api.endpoint}: {type(e).__name__}: {str(e).splitlines()[0][:200]}",
                        "check the network and the token (`hf auth whoami`); nothing was uploaded") from None
    write_card(source, cfg)  # fresh: evaluations run after training appear in it
    files = files_to_push(cfg, source)
    print(f"tunesmith: pushing {len(files)} files from {source} to {repo} as {user} "
          f"({'public' if public else 'private'})", file=sys.stderr)
    url = api.create_repo(repo, private=not public, exist_ok=True, repo_type="model")
    api.create_commit(repo, operations=[CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(path))
                                        for name, path in files.items()],
                      commit_message=f"tunesmith: {cfg.name} ({cfg.model.method}) from {cfg.base_model}", repo_type="model")
    return str(url)
