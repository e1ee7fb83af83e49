"""What every benchmark script records: the machine, and the JSON result file."""

import json
import os
import platform


def cpu_description() -> str:
    import torch  # here, not at the top: demo_memory.py measures others and should stay small

    return f"CPU: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def write_result(record: dict, path: str, show: bool = True) -> None:
    """Print the record (unless ``show`` is false) and write it as JSON (the committed result
    files are these)."""
    if show:
        print(json.dumps(record, indent=2))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(record, f, indent=2)
        f.write("\n")
