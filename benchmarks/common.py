"""What every benchmark script records: the machine, and the JSON result file."""

import json
import os
import platform

import torch


def cpu_description() -> str:
    return f"CPU: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def write_result(record: dict, path: str) -> None:
    """Print the record and write it as JSON (the committed result files are these)."""
    print(json.dumps(record, indent=2))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(record, f, indent=2)
        f.write("\n")
