"""NTLM over HTTP for the EWS endpoint: the server side of the three-message handshake, NTLMv2 only.

IIS in front of Exchange offers ``WWW-Authenticate: NTLM``; the client answers a NEGOTIATE message,
the server a CHALLENGE, the client an AUTHENTICATE message proving it knows the password, and the
TCP connection is then authenticated (later requests on it carry no Authorization header).
Message layouts and the NTLMv2 proof: [MS-NLMP] 2.2.1.1–2.2.1.3 and 3.3.2,
https://learn.microsoft.com/en-us/openspecs/windows_protocols/ms-nlmp/907f519d-6217-45b1-b421-dca10fc8af0d
Session security (signing, sealing, MIC) is not checked: the sandbox only needs to know who is calling.

Character sets are negotiated, not assumed: the CHALLENGE carries exactly one of UNICODE and OEM —
UNICODE if the client asked for it, else OEM ([MS-NLMP] 3.2.5.1.1,
https://learn.microsoft.com/en-us/openspecs/windows_protocols/ms-nlmp/81d15e3e-3ac3-41f0-920d-846149f3a814) —
and text fields of the messages are read in the set the message's flags name ([MS-NLMP] 2.2.2.5,
https://learn.microsoft.com/en-us/openspecs/windows_protocols/ms-nlmp/99d90ff4-957f-4c8a-80e4-5bfe5a9a9832:
"A==1: Unicode; A==0 and B==1: OEM; A==0 and B==0: SEC_E_INVALID_TOKEN"). Clients that offer
OEM only (ntlm-client, behind ews-javascript-api's @ewsjs/xhr) then send OEM user names.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
import time
from dataclasses import dataclass

SIGNATURE = b"NTLMSSP\x00"
_UNICODE = 0x00000001
_OEM = 0x00000002
_REQUEST_TARGET = 0x00000004
_NTLM = 0x00000200
_ALWAYS_SIGN = 0x00008000
_TARGET_TYPE_DOMAIN = 0x00010000
_EXTENDED_SESSION_SECURITY = 0x00080000
_TARGET_INFO = 0x00800000
_VERSION = 0x02000000
# Flags the server echoes when the client asks for them (signing/sealing/key exchange included, so
# clients that require them proceed; the sandbox never uses the session key). The character set is
# not among them: the server picks one (`charset_flag`).
_ECHOED = 0xE2088297 & ~(_UNICODE | _OEM)
# The OEM code page of an en-US Windows server, in which OEM-negotiated names travel.
OEM_ENCODING = "cp437"


class NtlmError(Exception):
    """A malformed or unacceptable NTLM message (the endpoint answers 401)."""


def _md4(data: bytes) -> bytes:
    """MD4 (RFC 1320); OpenSSL 3 no longer ships it, and NTLM's NT hash is MD4 of the password."""

    def rotl(value: int, shift: int) -> int:
        value &= 0xFFFFFFFF
        return ((value << shift) | (value >> (32 - shift))) & 0xFFFFFFFF

    message = data + b"\x80" + b"\x00" * ((55 - len(data)) % 64) + struct.pack("<Q", len(data) * 8)
    a, b, c, d = 0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476
    for offset in range(0, len(message), 64):
        x = struct.unpack("<16I", message[offset : offset + 64])
        aa, bb, cc, dd = a, b, c, d
        for i in (0, 4, 8, 12):  # round 1: F(x, y, z) = xy | ~x z
            a = rotl(a + ((b & c) | (~b & d)) + x[i], 3)
            d = rotl(d + ((a & b) | (~a & c)) + x[i + 1], 7)
            c = rotl(c + ((d & a) | (~d & b)) + x[i + 2], 11)
            b = rotl(b + ((c & d) | (~c & a)) + x[i + 3], 19)
        for i in (0, 1, 2, 3):  # round 2: G(x, y, z) = xy | xz | yz, constant 0x5A827999
            a = rotl(a + ((b & c) | (b & d) | (c & d)) + x[i] + 0x5A827999, 3)
            d = rotl(d + ((a & b) | (a & c) | (b & c)) + x[i + 4] + 0x5A827999, 5)
            c = rotl(c + ((d & a) | (d & b) | (a & b)) + x[i + 8] + 0x5A827999, 9)
            b = rotl(b + ((c & d) | (c & a) | (d & a)) + x[i + 12] + 0x5A827999, 13)
        for i in (0, 2, 1, 3):  # round 3: H(x, y, z) = x ^ y ^ z, constant 0x6ED9EBA1
            a = rotl(a + (b ^ c ^ d) + x[i] + 0x6ED9EBA1, 3)
            d = rotl(d + (a ^ b ^ c) + x[i + 8] + 0x6ED9EBA1, 9)
            c = rotl(c + (d ^ a ^ b) + x[i + 4] + 0x6ED9EBA1, 11)
            b = rotl(b + (c ^ d ^ a) + x[i + 12] + 0x6ED9EBA1, 15)
        a, b, c, d = (a + aa) & 0xFFFFFFFF, (b + bb) & 0xFFFFFFFF, (c + cc) & 0xFFFFFFFF, (d + dd) & 0xFFFFFFFF
    return struct.pack("<4I", a, b, c, d)


def nt_hash(password: str) -> bytes:
    return _md4(password.encode("utf-16-le"))


def message_type(token: bytes) -> int:
    if len(token) < 12 or not token.startswith(SIGNATURE):
        raise NtlmError("not an NTLM message")
    kind: int = struct.unpack_from("<I", token, 8)[0]
    return kind


def _filetime(seconds: float) -> bytes:
    return struct.pack("<Q", int((seconds + 11_644_473_600) * 10_000_000))


def charset_flag(flags: int) -> int:
    """The character set a message's flags select: UNICODE if set, else OEM, else the token is invalid."""
    if flags & _UNICODE:
        return _UNICODE
    if flags & _OEM:
        return _OEM
    raise NtlmError("neither NTLMSSP_NEGOTIATE_UNICODE nor NTLM_NEGOTIATE_OEM is set (SEC_E_INVALID_TOKEN)")


def _encoding(flags: int) -> str:
    return "utf-16-le" if charset_flag(flags) == _UNICODE else OEM_ENCODING


def challenge_message(
    negotiate: bytes, *, server_challenge: bytes, domain: str, computer: str, dns_domain: str
) -> bytes:
    """A CHALLENGE message answering ``negotiate`` ([MS-NLMP] 2.2.1.2), with the usual AV pairs.

    TargetName is in the negotiated character set; AV pairs are always Unicode (2.2.2.1).
    """
    if message_type(negotiate) != 1:
        raise NtlmError("expected a NEGOTIATE message")
    client_flags = struct.unpack_from("<I", negotiate, 12)[0] if len(negotiate) >= 16 else 0
    charset = charset_flag(client_flags)
    flags = (client_flags & _ECHOED) | charset | _REQUEST_TARGET | _NTLM | _ALWAYS_SIGN
    flags |= _TARGET_TYPE_DOMAIN | _EXTENDED_SESSION_SECURITY | _TARGET_INFO | _VERSION
    try:
        target = domain.encode(_encoding(flags))
    except UnicodeEncodeError as exc:
        raise NtlmError("the domain name has no OEM form") from exc
    pairs = [
        (2, domain),
        (1, computer),
        (4, dns_domain),
        (3, f"{computer.lower()}.{dns_domain}"),
    ]
    info = b"".join(struct.pack("<HH", av_id, len(v.encode("utf-16-le"))) + v.encode("utf-16-le") for av_id, v in pairs)
    info += struct.pack("<HH", 7, 8) + _filetime(time.time()) + struct.pack("<HH", 0, 0)
    header_length = 56
    version = struct.pack("<BBH3xB", 10, 0, 20348, 15)  # Windows Server 2022, NTLM revision 15
    return (
        SIGNATURE
        + struct.pack("<I", 2)
        + struct.pack("<HHI", len(target), len(target), header_length)
        + struct.pack("<I", flags)
        + server_challenge
        + b"\x00" * 8
        + struct.pack("<HHI", len(info), len(info), header_length + len(target))
        + version
        + target
        + info
    )


@dataclass(frozen=True, slots=True)
class Authenticate:
    """The parts of an AUTHENTICATE message ([MS-NLMP] 2.2.1.3) the server checks."""

    user: str
    domain: str
    nt_response: bytes

    @classmethod
    def parse(cls, token: bytes) -> Authenticate:
        if message_type(token) != 3 or len(token) < 64:
            raise NtlmError("expected an AUTHENTICATE message")

        def field(offset: int) -> bytes:
            length, _, start = struct.unpack_from("<HHI", token, offset)
            if start + length > len(token):
                raise NtlmError("an AUTHENTICATE field points outside the message")
            return token[start : start + length]

        encoding = _encoding(struct.unpack_from("<I", token, 60)[0])
        try:
            return cls(
                user=field(36).decode(encoding),
                domain=field(28).decode(encoding),
                nt_response=field(20),
            )
        except UnicodeDecodeError as exc:
            raise NtlmError("undecodable user or domain name") from exc

    @property
    def account_name(self) -> str:
        """How the directory names the caller: ``DOMAIN\\user``, or the UPN when no domain was sent."""
        return f"{self.domain}\\{self.user}" if self.domain else self.user

    def proves(self, password: str, server_challenge: bytes) -> bool:
        """NTLMv2: NTProofStr = HMAC-MD5(NTOWFv2, server challenge ‖ client blob); v1 is refused."""
        if len(self.nt_response) <= 24:
            return False
        key = hmac.new(nt_hash(password), (self.user.upper() + self.domain).encode("utf-16-le"), hashlib.md5).digest()
        proof, blob = self.nt_response[:16], self.nt_response[16:]
        expected = hmac.new(key, server_challenge + blob, hashlib.md5).digest()
        return hmac.compare_digest(proof, expected)


def new_server_challenge() -> bytes:
    return os.urandom(8)
