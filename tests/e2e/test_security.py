"""Who gets in: mutual TLS for agents, credentials for workflowctl, plaintext only on loopback."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.cluster import BIN, Cluster, Pki, free_port, wait_for
from workflowd.credentials import channel_credentials
from workflowd.rpc import workflow_pb2 as pb
from workflowd.rpc import workflow_pb2_grpc as rpc

pytestmark = pytest.mark.e2e

TOKEN = "t0ken-for-the-control-api-0123456789"  # noqa: S105 - a test's own token

ON_AGENT = """
name: on-agent
steps:
  - {{id: only, task: noop, on: {{agent: {agent}}}}}
"""


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One coordinator serving mutual TLS, shared by the tests of this module."""
    root = tmp_path_factory.mktemp("tls")
    cluster = Cluster(root, pki=Pki(root / "pki"))
    cluster.start_daemon()
    yield cluster
    cluster.close()


def refused_in_log(cluster: Cluster, name: str, fragment: str) -> bool:
    """Whether agent `name` has logged, more than once, being refused with `fragment`."""
    return cluster.log(f"agent-{name}").count(fragment) >= 2


def never_connected(cluster: Cluster, name: str) -> bool:
    agents = cluster.ctl("agents", "--json").json_lines()
    return not any(agent["name"] == name for agent in agents)


def test_agent_with_a_valid_certificate_runs_steps(tls: Cluster, write_flow) -> None:
    """An agent whose certificate names it connects over mutual TLS and runs a step."""
    tls.start_agent("tls-good")

    result = tls.ctl("submit", "--follow", str(write_flow(ON_AGENT.format(agent="tls-good"))))

    assert result.code == 0, result.stdout + result.stderr
    assert tls.run_status(result.stdout.split()[0])["steps"][0]["agent"] == "tls-good"


def test_agent_with_a_certificate_from_another_ca_is_refused(tls: Cluster, tmp_path: Path) -> None:
    """A certificate from a CA the coordinator does not trust fails the TLS handshake."""
    stranger = Pki(tmp_path / "other-pki")
    cert, key = stranger.agent("tls-stranger")
    tls.start_agent(
        "tls-stranger",
        *("--tls-cert", str(cert), "--tls-key", str(key), "--tls-ca", str(tls.pki.ca)),
        wait=False,
        tls=False,
    )

    wait_for(lambda: refused_in_log(tls, "tls-stranger", "UNAVAILABLE"), 30, "two refusals")
    assert never_connected(tls, "tls-stranger")


def test_agent_claiming_another_name_than_its_certificate_is_refused(tls: Cluster) -> None:
    """An agent whose hello claims a name its certificate does not carry is refused."""
    tls.start_agent("tls-liar", *tls.pki.agent_args("tls-good"), wait=False, tls=False)

    wait_for(lambda: refused_in_log(tls, "tls-liar", "PERMISSION_DENIED"), 30, "two refusals")
    assert "the certificate names 'tls-good', but the hello claims 'tls-liar'" in tls.log(
        "agent-tls-liar"
    )
    assert '"event": "agent_refused"' in tls.log("workflowd")
    assert never_connected(tls, "tls-liar")


def test_agent_without_a_certificate_is_refused(tls: Cluster) -> None:
    """An agent that does not present a certificate, plaintext or TLS, cannot connect."""
    tls.start_agent("tls-bare", wait=False, tls=False)
    wait_for(lambda: refused_in_log(tls, "tls-bare", "UNAVAILABLE"), 30, "two refusals")

    # over TLS, trusting the coordinator, but with no certificate of its own
    credentials = channel_credentials(tls.pki.ca)
    with grpc.secure_channel(tls.address, credentials) as channel:
        call = rpc.AgentServiceStub(channel).Connect(
            iter([pb.AgentMessage(hello=pb.Hello(name="tls-bare"))]), timeout=10
        )
        with pytest.raises(grpc.RpcError) as refused:
            next(call)

    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert never_connected(tls, "tls-bare")


def test_operator_certificate_cannot_connect_as_an_agent(tls: Cluster) -> None:
    """A certificate that is not an agent's is refused on the agent stream."""
    cert, key = tls.pki.operator()
    tls.start_agent(
        "test-operator",
        *("--tls-cert", str(cert), "--tls-key", str(key), "--tls-ca", str(tls.pki.ca)),
        wait=False,
        tls=False,
    )

    wait_for(
        lambda: refused_in_log(tls, "test-operator", "is not an agent certificate"),
        30,
        "two refusals",
    )


def test_operator_without_credentials_is_refused(tls: Cluster) -> None:
    """workflowctl without a client certificate cannot reach the control API."""
    bare = tls.ctl("list", env={"WORKFLOW_TLS_CERT": None, "WORKFLOW_TLS_KEY": None})
    plaintext = tls.ctl(
        "list", env={"WORKFLOW_TLS_CA": None, "WORKFLOW_TLS_CERT": None, "WORKFLOW_TLS_KEY": None}
    )

    assert bare.code == 4
    assert "does it accept your certificate" in bare.stderr
    assert plaintext.code == 4


def test_agent_certificate_cannot_call_the_control_api(tls: Cluster) -> None:
    """An agent's credentials are refused by the control API, with PERMISSION_DENIED."""
    cert, key = tls.pki.agent("tls-good")

    result = tls.ctl("list", env={"WORKFLOW_TLS_CERT": str(cert), "WORKFLOW_TLS_KEY": str(key)})

    assert result.code == 5
    assert "agent certificates cannot call the control API" in result.stderr
    assert '"event": "control_call_refused"' in tls.log("workflowd")


def test_non_ascii_agent_name_round_trips_through_its_certificate(
    tls: Cluster, write_flow
) -> None:
    """An agent named outside ASCII, with that name in its certificate, runs a step."""
    tls.start_agent("hôte-ü")

    result = tls.ctl("submit", "--follow", str(write_flow(ON_AGENT.format(agent="hôte-ü"))))

    assert result.code == 0, result.stdout + result.stderr
    run = tls.run_status(result.stdout.split()[0])
    assert run["steps"][0]["agent"] == "hôte-ü"
    assert "hôte-ü" in [agent["name"] for agent in tls.ctl("agents", "--json").json_lines()]


@pytest.fixture
def tokened(tmp_path: Path) -> Iterator[Cluster]:
    """A plaintext loopback coordinator whose control API requires a bearer token."""
    cluster = Cluster(tmp_path, token=TOKEN)
    cluster.start_daemon()
    yield cluster
    cluster.close()


def test_control_api_requires_the_token(tokened: Cluster) -> None:
    """Without the token, or with a wrong one, calls are UNAUTHENTICATED; with it they work."""
    missing = tokened.ctl("list", env={"WORKFLOW_TOKEN": None})
    wrong = tokened.ctl("list", env={"WORKFLOW_TOKEN": "not-the-token-but-long-enough"})
    right = tokened.ctl("list")

    assert missing.code == 5
    assert "the control API needs a bearer token" in missing.stderr
    assert wrong.code == 5
    assert "the token is not valid" in wrong.stderr
    assert right.code == 0
    assert tokened.token not in tokened.log("workflowd")

    with (
        grpc.insecure_channel(tokened.address) as channel,
        pytest.raises(grpc.RpcError) as refused,
    ):
        rpc.ControlServiceStub(channel).ListRuns(pb.ListRunsRequest(), timeout=10)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_token_file_is_read_by_workflowctl(tokened: Cluster, tmp_path: Path) -> None:
    """WORKFLOW_TOKEN_FILE gives workflowctl the token without putting it on a command line."""
    token_file = tmp_path / "my-token"
    token_file.write_text(tokened.token + "\n")

    result = tokened.ctl(
        "list", env={"WORKFLOW_TOKEN": None, "WORKFLOW_TOKEN_FILE": str(token_file)}
    )

    assert result.code == 0, result.stderr


def test_agent_certificate_with_a_valid_token_is_still_refused(tmp_path: Path) -> None:
    """A token does not turn an agent's certificate into an operator's."""
    cluster = Cluster(tmp_path, pki=Pki(tmp_path / "pki"), token=TOKEN)
    cluster.start_daemon()
    try:
        cert, key = cluster.pki.agent("host-a")
        as_agent = cluster.ctl(
            "list", env={"WORKFLOW_TLS_CERT": str(cert), "WORKFLOW_TLS_KEY": str(key)}
        )
        as_operator = cluster.ctl("list", env={"WORKFLOW_TOKEN": None})
    finally:
        cluster.close()

    assert as_agent.code == 5
    assert "agent certificates cannot call the control API" in as_agent.stderr
    assert as_operator.code == 0, as_operator.stderr


def test_plaintext_beyond_loopback_needs_insecure(tmp_path: Path) -> None:
    """workflowd refuses to serve plaintext on a non-loopback address unless told --insecure."""
    result = subprocess.run(
        [
            str(BIN / "workflowd"),
            "--listen",
            f"0.0.0.0:{free_port()}",
            "--store",
            str(tmp_path / "x.db"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 2
    assert "refusing to listen on 0.0.0.0" in result.stderr
    assert "--insecure" in result.stderr
    assert not (tmp_path / "x.db").exists()


def test_certs_commands_make_a_working_pki(tmp_path: Path, write_flow) -> None:
    """`workflowctl certs init/issue` create certificates that a TLS cluster accepts."""
    pki = tmp_path / "made"

    def certs(*args: str) -> list[str]:
        done = subprocess.run(
            [str(BIN / "workflowctl"), "certs", *args], capture_output=True, text=True, check=True
        )
        return done.stdout.split()

    certs("init", str(pki))
    coordinator = certs("issue", str(pki), "coordinator", "localhost", "--ip", "127.0.0.1")
    agent = certs("issue", str(pki), "agent", "made-agent")
    operator = certs("issue", str(pki), "operator", "alice")

    assert oct((pki / "ca.key").stat().st_mode & 0o777) == "0o600"
    cluster = Cluster(tmp_path / "cluster")
    cluster.root.mkdir()
    ca = str(pki / "ca.pem")
    tls_args = ("--tls-cert", coordinator[0], "--tls-key", coordinator[1], "--tls-client-ca", ca)
    env = {
        "WORKFLOW_TLS_CA": ca,
        "WORKFLOW_TLS_CERT": operator[0],
        "WORKFLOW_TLS_KEY": operator[1],
    }
    try:
        cluster.daemon = cluster._spawn(
            "workflowd",
            [
                str(BIN / "workflowd"),
                "--listen",
                cluster.address,
                "--store",
                str(cluster.store_path),
                *tls_args,
            ],
        )
        cluster.start_agent(
            "made-agent",
            *("--tls-cert", agent[0], "--tls-key", agent[1], "--tls-ca", ca),
            wait=False,
        )
        wait_for(lambda: "made-agent" in cluster.ctl("agents", env=env).stdout, 30, "the agent")
        result = cluster.ctl(
            "submit", "--follow", str(write_flow(ON_AGENT.format(agent="made-agent"))), env=env
        )
    finally:
        cluster.close()

    assert result.code == 0, result.stdout + result.stderr
