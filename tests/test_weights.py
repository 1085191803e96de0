"""Official weights (spectrascope.zoo.weights, --pretrained) against an HTTP server started here on
127.0.0.1: weights folder, mirror, official URL, cache hits without network, truncated and corrupted
cache files, interrupted downloads resumed with a Range request, the one-line offline and
non-direct-URL messages, and ``--pretrained`` on the command line."""
from __future__ import annotations

import dataclasses
import hashlib
import http.server
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch
from click.testing import CliRunner

import spectrascope
from spectrascope.zoo import registry, weights
from spectrascope.zoo.weights import WeightsError

NAME = "poolformer_s12"


class _Server:
    """Serves ``files`` (name -> bytes) with Range support; ``cut`` (name -> byte count) closes the
    first response of a file after that many body bytes."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.cut: dict[str, int] = {}
        self.slow: dict[str, float] = {}          # name -> seconds between 4 KiB chunks
        self.range_from_zero: set[str] = set()    # names whose range answers start at byte 0
        self.requests: list[tuple[str, str | None]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                name = self.path.rsplit("/", 1)[-1]
                rng = self.headers.get("Range")
                outer.requests.append((self.path, rng))
                if name not in outer.files:
                    self.send_error(404)
                    return
                data = outer.files[name]
                start = int(rng.split("=")[1].split("-")[0]) if rng else 0
                if name in outer.range_from_zero:
                    start = 0
                body = data[start:]
                self.send_response(206 if rng else 200)
                if rng:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                cut = outer.cut.pop(name, None)
                body = body if cut is None else body[:cut]
                if name in outer.slow:
                    for k in range(0, len(body), 4096):
                        self.wfile.write(body[k:k + 4096])
                        self.wfile.flush()
                        time.sleep(outer.slow[name])
                else:
                    self.wfile.write(body)
                self.wfile.flush()
                if cut is not None:
                    self.close_connection = True

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECTRASCOPE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("SPECTRASCOPE_WEIGHTS", raising=False)
    monkeypatch.delenv("SPECTRASCOPE_WEIGHTS_MIRROR", raising=False)
    return tmp_path


@pytest.fixture()
def server():
    with _Server() as s:
        yield s


def _payload(seed: int = 0) -> tuple[bytes, dict]:
    torch.manual_seed(seed)
    state = spectrascope.create_model(NAME).state_dict()
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue(), state


def _card(url=None, **changes):
    card = registry.get_card(NAME)
    return dataclasses.replace(card, weight_url=url if url is not None else card.weight_url, **changes)


def _cached(env):
    return env / "cache" / "weights" / registry.get_card(NAME).weight_file


def test_weights_folder_is_used_first_without_network(env, server, monkeypatch):
    folder = env / "w"
    folder.mkdir()
    data, state = _payload()
    (folder / registry.get_card(NAME).weight_file).write_bytes(data)
    monkeypatch.setenv("SPECTRASCOPE_WEIGHTS_MIRROR", server.url)
    path = weights.resolve(_card(), weights_dir=folder)
    assert path.parent == folder and not server.requests
    model = spectrascope.create_model(NAME, pretrained=True, weights_dir=folder)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    monkeypatch.setenv("SPECTRASCOPE_WEIGHTS", str(folder))          # the environment variable works too
    assert weights.resolve(_card()).parent == folder and not server.requests


def test_mirror_download_then_cache_hit_without_network(env, server, monkeypatch):
    data, _ = _payload()
    file = registry.get_card(NAME).weight_file
    server.files[file] = data
    monkeypatch.setenv("SPECTRASCOPE_WEIGHTS_MIRROR", server.url + "/mirror/")
    path = weights.resolve(_card(), progress=False)
    assert path == _cached(env) and path.read_bytes() == data
    assert server.requests == [(f"/mirror/{file}", None)]
    record = weights._read_record(path)
    assert record["sha256"] == hashlib.sha256(data).hexdigest() and record["size"] == len(data)
    assert not path.with_name(path.name + ".part").exists()
    server.httpd.shutdown()                                           # no network from now on
    assert weights.resolve(_card(), progress=False) == path
    assert len(server.requests) == 1


def test_official_direct_url_is_downloaded(env, server):
    data, _ = _payload()
    server.files["official.pth"] = data
    path = weights.resolve(_card(url=server.url + "/releases/official.pth"), progress=False)
    assert path.read_bytes() == data and path.name == registry.get_card(NAME).weight_file


def test_truncated_cache_file_is_resumed(env, server, monkeypatch):
    data, _ = _payload()
    file = registry.get_card(NAME).weight_file
    server.files[file] = data
    monkeypatch.setenv("SPECTRASCOPE_WEIGHTS_MIRROR", server.url)
    path = weights.resolve(_card(), progress=False)
    path.write_bytes(data[: len(data) // 3])                          # truncated behind our back
    assert weights.verify_cached(path) == "truncated"
    assert weights.resolve(_card(), progress=False).read_bytes() == data
    assert server.requests[-1] == (f"/{file}", f"bytes={len(data) // 3}-")


def test_corrupted_cache_file_is_refetched(env, server, monkeypatch):
    data, _ = _payload()
    file = registry.get_card(NAME).weight_file
    server.files[file] = data
    monkeypatch.setenv("SPECTRASCOPE_WEIGHTS_MIRROR", server.url)
    path = weights.resolve(_card(), progress=False)
    bad = bytearray(data)
    bad[len(bad) // 2] ^= 0xFF                                        # same size, one byte flipped
    path.write_bytes(bytes(bad))
    assert weights.verify_cached(path) == "corrupt"
    assert weights.resolve(_card(), progress=False).read_bytes() == data
    assert server.requests[-1] == (f"/{file}", None) and len(server.requests) == 2


def test_interrupted_download_is_resumed_with_a_range_request(env, server, monkeypatch):
    data, state = _payload()
    file = registry.get_card(NAME).weight_file
    server.files[file] = data
    server.cut[file] = len(data) // 2                                 # the first response stops half-way
    monkeypatch.setenv("SPECTRASCOPE_WEIGHTS_MIRROR", server.url)
    path = weights.resolve(_card(), progress=False)
    assert path.read_bytes() == data
    assert [r for _, r in server.requests] == [None, f"bytes={len(data) // 2}-"]
    model = spectrascope.create_model(NAME, pretrained=True)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


def test_interrupted_download_without_retries_keeps_the_part_for_the_next_run(env, server, monkeypatch):
    data, _ = _payload()
    file = registry.get_card(NAME).weight_file
    server.files[file] = data
    server.cut[file] = 1000
    monkeypatch.setattr(weights, "RETRIES", 0)
    monkeypatch.setenv("SPECTRASCOPE_WEIGHTS_MIRROR", server.url)
    with pytest.raises(WeightsError, match="interrupted"):
        weights.download(server.url + "/" + file, _cached(env), progress=False, retries=0)
    part = _cached(env).with_name(file + ".part")
    assert part.stat().st_size == 1000
    assert weights.resolve(_card(), progress=False).read_bytes() == data
    assert server.requests[-1][1] == "bytes=1000-"


def test_offline_message_is_one_line_naming_url_and_folder(env, server):
    url = server.url + "/gone/poolformer_s12.pth.tar"
    server.httpd.shutdown()
    server.httpd.server_close()
    with pytest.raises(WeightsError) as err:
        weights.resolve(_card(url=url), weights_dir=env / "w", progress=False)
    text = str(err.value)
    assert "\n" not in text and url in text and str(env / "w") in text


def test_non_direct_url_is_refused_in_one_line(env):
    card = _card(url="https://onedrive.live.com/?id=ABC", weight_file="checkpoint_ema_score_79.pt")
    with pytest.raises(WeightsError) as err:
        weights.resolve(card)
    text = str(err.value)
    assert "not a direct download" in text and "onedrive.live.com" in text and "\n" not in text
    affnet = registry.get_card("affnet")
    with pytest.raises(WeightsError, match="TokenMixers"):
        weights.resolve(affnet, weights_dir=env)
    (env / "checkpoint_ema_score_79.8.pt").write_bytes(b"x")           # found by the card's pattern
    assert weights.resolve(affnet, weights_dir=env).name == "checkpoint_ema_score_79.8.pt"


def test_models_without_release_and_direct_url_classification():
    with pytest.raises(WeightsError, match="no released weights"):
        weights.resolve(registry.get_card("gfformer_s18"))
    assert weights.is_direct("https://github.com/okojoalg/dfformer/releases/download/weights/dfformer_s18.pth")
    assert weights.is_direct("https://huggingface.co/sail/dl/resolve/main/caformer/caformer_s18.pth")
    assert weights.is_direct("https://cloud.tsinghua.edu.cn/f/3d0c1579aa524a0a99dd/?dl=1")
    assert not weights.is_direct("https://1drv.ms/u/s!abc") and not weights.is_direct(None)


def test_pretrained_option_on_the_command_line(env, server, monkeypatch):
    from spectrascope.cli import main
    data, _ = _payload()
    server.files[registry.get_card(NAME).weight_file] = data
    monkeypatch.setenv("SPECTRASCOPE_WEIGHTS_MIRROR", server.url)
    res = CliRunner().invoke(main, ["predict", "--model", NAME, "--pretrained", "--num-images", "1",
                                    "--img-size", "64"])
    assert res.exit_code == 0, res.output
    assert "random weights" not in res.output and _cached(env).is_file()
    res = CliRunner().invoke(main, ["predict", "--model", "gfformer_s18", "--pretrained", "--num-images", "1"])
    assert res.exit_code == 2 and "no released weights" in res.output


def test_recipe_pretrained_fills_every_model_without_a_checkpoint(env):
    from spectrascope.recipes.base import pretrained_checkpoints
    folder = env / "w"
    folder.mkdir()
    for name in ("dfformer_s18", "gfnet_ti", "spanet_s"):
        (folder / registry.get_card(name).weight_file).write_bytes(b"weights of " + name.encode())
    path = {n: str(folder / registry.get_card(n).weight_file) for n in ("dfformer_s18", "gfnet_ti", "spanet_s")}
    (folder / "s.pth").write_bytes(b"mine")
    models = ["spanet_s", "gfnet_ti", "gfformer_s18", "timm:resnet18"]
    cks, left = pretrained_checkpoints(models, (f"spanet_s={folder / 's.pth'}",), folder)
    assert cks == (f"spanet_s={folder / 's.pth'}", f"gfnet_ti={path['gfnet_ti']}")   # --checkpoint wins
    assert left == ["gfformer_s18", "timm:resnet18"]                                  # no release: random weights
    cks, left = pretrained_checkpoints(["dfformer_s18"], (), folder)
    assert cks == (f"dfformer_s18={path['dfformer_s18']}",) and left == []


def test_weights_dir_without_pretrained_is_refused():
    from spectrascope.cli import main
    res = CliRunner().invoke(main, ["predict", "--model", NAME, "--weights-dir", "/tmp", "--num-images", "1"])
    assert res.exit_code == 2 and "--pretrained" in res.output


def test_figure_recipe_pretrained_resolves_all_its_models_and_fails_in_one_line_offline(env, server, monkeypatch):
    from spectrascope.cli import main
    url = server.url
    server.httpd.shutdown()
    server.httpd.server_close()
    monkeypatch.setenv("SPECTRASCOPE_WEIGHTS_MIRROR", url)
    res = CliRunner().invoke(main, ["figure", "dfformer-fig7", "--pretrained", "--output", str(env / "figs")])
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and url in lines[0]
    assert not (env / "figs").exists()


def test_concurrent_resolves_download_once(env, server, monkeypatch):
    data, _ = _payload()
    file = registry.get_card(NAME).weight_file
    server.files[file] = data
    monkeypatch.setenv("SPECTRASCOPE_WEIGHTS_MIRROR", server.url)
    out: list = []
    threads = [threading.Thread(target=lambda: out.append(weights.resolve(_card(), progress=False)))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(out) == 3 and all(p.read_bytes() == data for p in out)
    assert len(server.requests) == 1


def test_model_spec_pretrained_builds_with_the_official_file(env):
    from spectrascope.zoo.build import ModelSpec, build
    folder = env / "w"
    folder.mkdir()
    data, state = _payload(seed=5)
    (folder / registry.get_card(NAME).weight_file).write_bytes(data)
    spec = ModelSpec(NAME, img_size=64, pretrained=True, weights_dir=str(folder))
    assert spec.key() != ModelSpec(NAME, img_size=64).key()
    built = build(spec)
    assert not built.random_weights and built.describe()["checkpoint"] == str(folder / registry.get_card(NAME).weight_file)
    assert built.checkpoint_sha256 == hashlib.sha256(data).hexdigest()
    assert all(torch.equal(built.model.state_dict()[k], v) for k, v in state.items())


# ---------------------------------------------------------------------------- hostile mirrors, damaged entries


def _cache_files(env) -> list[str]:
    folder = env / "cache" / "weights"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_a_mirror_that_serves_an_html_page_leaves_nothing_cached(env, server, monkeypatch):
    server.files[registry.get_card(NAME).weight_file] = b"<!DOCTYPE html><html><body>Sign in</body></html>"
    monkeypatch.setenv("SPECTRASCOPE_WEIGHTS_MIRROR", server.url)
    with pytest.raises(WeightsError) as err:
        weights.resolve(_card(), progress=False)
    text = str(err.value)
    assert "did not serve weights" in text and "<!DOCTYPE html>" in text and "nothing was cached" in text
    assert "\n" not in text and _cache_files(env) == []


def test_a_damaged_cache_entry_names_itself_and_how_to_remove_it(env):
    """An entry an earlier version recorded after a bad download (size and sha256 match, the bytes are
    an HTML page): the one line names the file, says it is damaged and gives the command to remove it."""
    path = _cached(env)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"<html>not weights</html>")
    path.with_name(path.name + ".json").write_text(json.dumps(
        {"file": path.name, "url": "x", "size": path.stat().st_size,
         "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}))
    with pytest.raises(WeightsError) as err:
        weights.resolve(_card(), progress=False)
    text = str(err.value)
    assert str(path) in text and "damaged" in text and f"rm '{path}'" in text and "\n" not in text
    from spectrascope.cli import main
    res = CliRunner().invoke(main, ["predict", "--model", NAME, "--pretrained", "--num-images", "1"])
    assert res.exit_code == 2 and res.output.count("Error: ") == 1 and "rm '" in res.output


def test_a_range_answer_from_another_offset_starts_again(env, server, monkeypatch):
    data, _ = _payload()
    file = registry.get_card(NAME).weight_file
    server.files[file] = data
    server.cut[file] = len(data) // 2
    server.range_from_zero.add(file)             # answers bytes=N- with the whole file, marked as a range
    monkeypatch.setenv("SPECTRASCOPE_WEIGHTS_MIRROR", server.url)
    assert weights.resolve(_card(), progress=False).read_bytes() == data
    assert [r for _, r in server.requests] == [None, f"bytes={len(data) // 2}-", None]


def test_retries_are_counted_plainly(env, monkeypatch, caplog):
    def always_short(url, part, progress, label):
        part.write_bytes(b"x")
        raise weights._Incomplete("got 1 of 9 bytes")
    monkeypatch.setattr(weights, "_fetch_once", always_short)
    with caplog.at_level("WARNING", logger="spectrascope"), pytest.raises(WeightsError, match="kept and resumed"):
        weights.download("http://127.0.0.1:9/x.pth", env / "cache" / "weights" / "x.pth", progress=False, retries=2)
    notes = [r.getMessage() for r in caplog.records if "resuming" in r.getMessage()]
    assert [n.split("resuming ")[1] for n in notes] == ["(try 2 of 3)", "(try 3 of 3)"]


def test_cached_weights_load_when_the_cache_cannot_be_written(env, server, monkeypatch, caplog):
    data, _ = _payload()
    file = registry.get_card(NAME).weight_file
    server.files[file] = data
    monkeypatch.setenv("SPECTRASCOPE_WEIGHTS_MIRROR", server.url)
    path = weights.resolve(_card(), progress=False)
    record = path.with_name(path.name + ".json")
    rec = json.loads(record.read_text())
    assert rec["format"] == "torch"
    del rec["format"]                            # recorded by an earlier version: checked and recorded again
    record.write_text(json.dumps(rec))

    def read_only(*args, **kwargs):
        raise OSError(30, "Read-only file system")
    monkeypatch.setattr(weights.os, "replace", read_only)
    with caplog.at_level("WARNING", logger="spectrascope"):
        assert weights.resolve(_card(), progress=False) == path
    assert any("cannot record" in r.getMessage() for r in caplog.records)
    assert len(server.requests) == 1 and not [n for n in _cache_files(env) if ".tmp" in n]


def test_ctrl_c_during_a_download_exits_130_and_leaves_no_part_or_lock(env, server):
    data, _ = _payload()
    file = registry.get_card(NAME).weight_file
    server.files[file] = data
    server.slow[file] = 0.05
    child_env = dict(os.environ, MPLBACKEND="Agg", SPECTRASCOPE_CACHE=str(env / "cache"),
                     SPECTRASCOPE_WEIGHTS_MIRROR=server.url)
    proc = subprocess.Popen([sys.executable, "-m", "spectrascope.cli", "predict", "--model", NAME, "--pretrained",
                             "--num-images", "1"], env=child_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    part = _cached(env).with_name(file + ".part")
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not (part.exists() and part.stat().st_size > 8192):
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    lines = [ln for ln in err.split("\n") if ln.split("\r")[-1].strip()]
    assert "Traceback" not in err and "Aborted" not in err and lines[-1].startswith("stopped by SIGINT"), err
    assert _cache_files(env) == []
