"""Test fixtures written by hand: a real encrypted PDF (Standard security handler V1/R2, 40-bit RC4, PDF 1.4
spec section 3.5), so that loaders can be checked against encryption without a PDF library writing it."""
import hashlib
import struct

_PAD = bytes.fromhex("28BF4E5E4E758A4164004E56FFFA01082E2E00B6D0683E802F0CA9FE6453697A")


def _rc4(key, data):
    s, j = list(range(256)), 0
    for i in range(256):
        j = (j + s[i] + key[i % len(key)]) % 256
        s[i], s[j] = s[j], s[i]
    i = j = 0
    out = bytearray()
    for b in data:
        i = (i + 1) % 256
        j = (j + s[i]) % 256
        s[i], s[j] = s[j], s[i]
        out.append(b ^ s[(s[i] + s[j]) % 256])
    return bytes(out)


def encrypted_pdf(user_pw=b"secret", owner_pw=b"owner", text=b"Hello"):
    perms, file_id = -44, b"0123456789abcdef"
    owner = _rc4(hashlib.md5((owner_pw + _PAD)[:32]).digest()[:5], (user_pw + _PAD)[:32])           # algorithm 3.3
    key = hashlib.md5((user_pw + _PAD)[:32] + owner + struct.pack("<i", perms) + file_id).digest()[:5]  # 3.2
    user = _rc4(key, _PAD)                                                                            # 3.4
    content = b"BT /F1 24 Tf 72 700 Td (" + text + b") Tj ET"
    content = _rc4(hashlib.md5(key + struct.pack("<i", 4)[:3] + b"\0\0").digest()[:10], content)     # object 4
    objs = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
            b"/Resources << /Font << /F1 5 0 R >> >> >>",
            b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream",
            b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
            b"<< /Filter /Standard /V 1 /R 2 /O <" + owner.hex().encode() + b"> /U <" + user.hex().encode()
            + b"> /P %d >>" % perms]
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for i, body in enumerate(objs, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    fid = file_id.hex().encode()
    out += b"trailer\n<< /Size %d /Root 1 0 R /Encrypt 6 0 R /ID [<%s> <%s>] >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objs) + 1, fid, fid, xref)
    return bytes(out)
