"""`dh.prove` and `dh.verify`: Diffie-Hellman identification with a knowledge-of-exponent check.

The prover knows x with y = g^x (mod p). The verifier picks a random k and
sends the challenge v = g^k; the prover answers r = v^x; the verifier accepts
if and only if r = y^k. Only a prover that knows x can answer: r = g^(kx) =
y^k. The group is the 2048-bit MODP group of RFC 3526 (generator 2). The
two steps run at the same time on different hosts and talk through the
run's messages: the challenge on `<topic>.challenge`, the answer on
`<topic>.response`. Numbers travel as decimal text.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from workflowd.errors import TaskError
from workflowd.tasks import StepContext, Task

# RFC 3526, section 3: the 2048-bit MODP group, id 14.
P = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74"
    "020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F1437"
    "4FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF05"
    "98DA48361C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB"
    "9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B"
    "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF695581718"
    "3995497CEA956AE515D2261898FA051015728E5A8AACAA68FFFFFFFFFFFFFFFF",
    16,
)
G = 2
Q = (P - 1) // 2  # the order of the subgroup g generates (p is a safe prime)


def keypair() -> tuple[int, int]:
    """A secret exponent x and its public key y = g^x (mod p)."""
    x = secrets.randbelow(Q - 1) + 1
    return x, pow(G, x, P)


def _number(text: str, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise TaskError(f"{what} is not a decimal number", retryable=False) from None
    if not 1 < value < P - 1:
        raise TaskError(f"{what} is not an element of the group", retryable=False)
    return value


class ProveParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    secret_file: str = Field(
        description="A file on the prover's host holding its secret exponent x, in decimal; "
        "the secret never leaves that host."
    )
    topic: str = "dh"
    timeout_s: float = Field(default=60, gt=0)


class Prove(Task):
    name = "dh.prove"
    description = "Answers a Diffie-Hellman identification challenge with its secret exponent."
    Params = ProveParams

    def run(self, ctx: StepContext, params: ProveParams) -> dict:
        try:
            x = int(Path(params.secret_file).read_text().strip())
        except (OSError, ValueError) as exc:
            raise TaskError(
                f"cannot read a secret exponent from {params.secret_file}: {exc}"
            ) from None
        ctx.progress(0.0, "waiting for the challenge")
        v = _number(ctx.receive(f"{params.topic}.challenge", params.timeout_s), "the challenge")
        ctx.send(f"{params.topic}.response", str(pow(v, x, P)))
        ctx.progress(1.0, "answered")
        return {"answered": True}


class VerifyParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    public_y: str = Field(description="The prover's public key y = g^x mod p, in decimal.")
    topic: str = "dh"
    timeout_s: float = Field(default=60, gt=0)


class VerifyOutputs(BaseModel):
    accepted: bool
    challenge_bits: int


class Verify(Task):
    name = "dh.verify"
    description = "Challenges a prover and accepts only if it answers with the secret exponent."
    Params = VerifyParams
    Outputs = VerifyOutputs

    def run(self, ctx: StepContext, params: VerifyParams) -> VerifyOutputs:
        y = _number(params.public_y, "public_y")
        k = secrets.randbelow(Q - 1) + 1
        v = pow(G, k, P)
        ctx.send(f"{params.topic}.challenge", str(v))
        ctx.progress(0.5, "challenge sent, waiting for the answer")
        r = _number(ctx.receive(f"{params.topic}.response", params.timeout_s), "the answer")
        if r != pow(y, k, P):
            raise TaskError(
                "identification rejected: the answer is not y^k, so the prover "
                "does not know the secret exponent of y",
                retryable=False,
            )
        ctx.log.info("identification_accepted")
        return VerifyOutputs(accepted=True, challenge_bits=k.bit_length())
