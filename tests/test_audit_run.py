"""A real `policyc run` over loopback, its decision log signed, encrypted and split into
segment files, stopped by SIGTERM while it trades and flattens: `policyc audit verify`
finds the log sound, and it holds every order and fill the run counted."""
import json
import signal
import subprocess
import time

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from policyc.runtime.live.audit import read_log

from loopback import FAILSAFE_S, FLIP, HOST, ORCL_DATA, free_port, policyc_command


def _stop(proc) -> tuple[int, str, str]:
    proc.send_signal(signal.SIGTERM)
    try:
        out, err = proc.communicate(timeout=FAILSAFE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"{proc.args[1]} still running {FAILSAFE_S} s after SIGTERM; stderr: {err}")
    return proc.returncode, out, err


def test_a_real_run_writes_a_log_that_verifies(tmp_path):
    policy = tmp_path / "flip.yaml"
    policy.write_text(FLIP)
    log_key = bytes(range(32))
    key_file, sign_file, public_file = tmp_path / "log.key", tmp_path / "sign.pem", tmp_path / "sign.pub"
    key_file.write_text(log_key.hex())
    sign = Ed25519PrivateKey.generate()
    sign_file.write_bytes(sign.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    public_file.write_bytes(sign.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    for private in (key_file, sign_file):
        private.chmod(0o600)
    folder = tmp_path / "logs"
    log = folder / "decisions.jsonl"
    feed_port, venue_port = free_port(), free_port()
    pipes = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    feed = subprocess.Popen(policyc_command("replay-feed", "--data", f"ORCL={ORCL_DATA}", "--listen", f"{HOST}:{feed_port}",
                                     "--rate", "250", "--clients", "2"), **pipes)
    venue = subprocess.Popen(policyc_command("paper-venue", "--listen", f"{HOST}:{venue_port}",
                                      "--feed", f"ws://{HOST}:{feed_port}"), **pipes)
    run = subprocess.Popen(policyc_command("run", policy, "--feed", f"ws://{HOST}:{feed_port}",
                                    "--venue", f"ws://{HOST}:{venue_port}", "--log", log, "--flatten-on-exit",
                                    "--log-key-file", key_file, "--sign-key-file", sign_file,
                                    "--log-max-bytes", "8k"), **pipes)
    procs = [run, feed, venue]
    try:
        deadline = time.monotonic() + FAILSAFE_S
        while not (folder / "decisions.000002.jsonl").exists():  # two files full: trading is under way
            gone = [p for p in procs if p.poll() is not None]
            assert not gone, [(p.args[1], p.returncode, p.communicate()[1]) for p in gone]
            assert time.monotonic() < deadline, f"no third log file after {FAILSAFE_S} s"
            time.sleep(0.02)
        run_code, run_out, run_err = _stop(run)
        for proc in (feed, venue):
            _stop(proc)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert run_code == 0, run_err
    status = json.loads(run_out[:run_out.rindex("decision log:")])

    verify = subprocess.run(policyc_command("audit", "verify", folder, "--public-key", public_file, "--key-file", key_file),
                            capture_output=True, text=True, timeout=FAILSAFE_S)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    first, head, signatures, encrypted = verify.stdout.splitlines()
    assert first.startswith(f"OK {log}: ") and " in 1 run, " in first
    assert signatures.endswith("verified with --public-key; the log ends with its closing checkpoint")
    assert encrypted == "encrypted: 1 of 1 runs"

    records = read_log(log, log_key)
    kinds = [r["kind"] for r in records]
    assert kinds[0] == "session" and records[-1]["kind"] == "checkpoint" and records[-1]["closing"]
    assert head == f"chain head: {records[-1]['hash']}"
    assert status["orders"] > 0 and kinds.count("halt") == 1  # the flatten on exit
    assert kinds.count("order") == status["orders"] and kinds.count("fill") == status["fills"]
    assert len(list(folder.iterdir())) >= 3 and all(p.stat().st_size <= 8192 for p in folder.iterdir())
