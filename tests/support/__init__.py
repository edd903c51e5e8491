"""What the tests share that is neither a test nor a fixture (the fixtures are
tests/conftest.py's). Each module, and what it is for:

- ``dockerlab``: a Docker engine for the image and container tests (the machine's own,
  else a dockerd started here), ``docker`` to run the CLI and ``stop_when_ready``.
- ``fake_nvml``: a fake of the ``pynvml`` module, loaded by the bootstrap as its NVML
  module (``BOOTSTRAP_NVML_MODULE=tests.support.fake_nvml``) and driven by a JSON
  scenario in ``FAKE_NVML``: GPU preflight and hang tests without a GPU.
- ``faultproxy``: a fault-injecting HTTP proxy in front of the real S3 server (errors,
  resets, stalls, latency, flipped bytes), seeded, counting what it injected.
- ``hostile_s3``: an S3 endpoint that serves what a real server refuses to store
  (traversal keys, endless listings, short or long bodies, HTML, encrypted objects).
- ``lab``: the multi-node lab: a job's nodes started through run_train.sh on the hosts
  of ``netns``, one S3 server beside them, the job contracts and the port blocks.
- ``netns``: several real hosts on one machine (network namespaces on a bridge, each
  with its own hostname and /etc/hosts), or loopback addresses where that is refused.
- ``recording_s3``: an S3 endpoint that records every request as it arrived, to assert
  what a client sends on the wire (addressing, signature scope, checksums).
- ``wait``: waiting for something to happen on the thing itself (``wait_until`` a
  condition under a deadline, ``wait_for_line``, ``accepts``), never a sleep of a
  guessed length.
"""
