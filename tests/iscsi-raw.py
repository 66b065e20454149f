#!/usr/bin/env python3
"""A tiny iSCSI initiator for tests/iscsi-*.sh: logins and hostile PDUs.

    iscsi-raw.py PORT TARGET INITIATOR ACTION [ARG]

Actions (each prints one line a test can match):
  login          log in (no authentication): "status CCDD" (class, detail, hex)
  hold SECONDS   log in, print "ready", keep the session SECONDS, log out
  lun1           log in, TEST UNIT READY to LUN 1: "scsi STATUS key K asc A"
  tur            log in, TEST UNIT READY to LUN 0: "scsi STATUS key K asc A"
  oversize       log in, then a NOP-Out claiming a 16 MiB data segment:
                 "closed" when the target drops the connection
  badop          log in, a PDU with opcode 0x1f: "reject REASON"
  truncated      half a login PDU, then close: "sent"
  badtext        a login whose text has no '=': "status CCDD"
  ddigest        log in with DataDigest=CRC32C, then a NOP-Out whose data
                 digest is wrong: "reject REASON", then a good ping: "pong"
"""
import socket
import struct
import sys
import time


def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFF


class Conn:
    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.hd = self.dd = False
        self.cmdsn = 1
        self.statsn = 0

    def send(self, bhs, data=b"", bad_ddigest=False):
        bhs = bytearray(bhs)
        bhs[5:8] = len(data).to_bytes(3, "big")
        out = bytes(bhs)
        if self.hd:
            out += struct.pack("<I", crc32c(out))
        if data:
            pad = data + b"\0" * ((4 - len(data) % 4) % 4)
            out += pad
            if self.dd:
                c = crc32c(pad) ^ (1 if bad_ddigest else 0)
                out += struct.pack("<I", c)
        self.s.sendall(out)

    def recv_exact(self, n):
        buf = b""
        while len(buf) < n:
            chunk = self.s.recv(n - len(buf))
            if not chunk:
                raise EOFError
            buf += chunk
        return buf

    def recv(self):
        bhs = self.recv_exact(48)
        if self.hd:
            self.recv_exact(4)
        dlen = int.from_bytes(bhs[5:8], "big")
        data = b""
        if dlen:
            data = self.recv_exact((dlen + 3) & ~3)[:dlen]
            if self.dd:
                self.recv_exact(4)
        return bhs, data

    def login(self, target, initiator, text=None, digests=False):
        keys = [
            "InitiatorName=" + initiator,
            "TargetName=" + target,
            "SessionType=Normal",
            "HeaderDigest=" + ("CRC32C" if digests else "None"),
            "DataDigest=" + ("CRC32C" if digests else "None"),
            "MaxRecvDataSegmentLength=65536",
        ]
        if text is None:
            text = b"".join(k.encode() + b"\0" for k in keys)
        bhs = bytearray(48)
        bhs[0] = 0x43
        bhs[1] = 0x87  # T, CSG 1 (operational), NSG 3 (full feature)
        bhs[8:14] = bytes([0x80, 0, 0, 1, 2, 3])
        bhs[16:20] = struct.pack(">I", 1)
        bhs[24:28] = struct.pack(">I", self.cmdsn)
        self.send(bhs, text)
        rsp, _ = self.recv()
        self.statsn = struct.unpack(">I", rsp[24:28])[0] + 1
        if rsp[36] == 0 and digests:
            self.hd = self.dd = True
        return rsp[36] << 8 | rsp[37]

    def scsi(self, lun, cdb, edtl=0, itt=7):
        bhs = bytearray(48)
        bhs[0] = 0x01
        bhs[1] = 0x80 | (0x40 if edtl else 0)
        bhs[9] = lun
        bhs[16:20] = struct.pack(">I", itt)
        bhs[20:24] = struct.pack(">I", edtl)
        bhs[24:28] = struct.pack(">I", self.cmdsn)
        bhs[28:32] = struct.pack(">I", self.statsn)
        bhs[32 : 32 + len(cdb)] = cdb
        self.cmdsn += 1
        self.send(bhs)
        while True:
            rsp, data = self.recv()
            if rsp[0] & 0x3F == 0x21:
                key = asc = 0
                if len(data) >= 16:
                    key, asc = data[2 + 2] & 0x0F, data[2 + 12]
                return rsp[3], key, asc

    def nop(self, payload=b"ping", bad_ddigest=False):
        bhs = bytearray(48)
        bhs[0] = 0x40  # immediate NOP-Out
        bhs[1] = 0x80
        bhs[16:20] = struct.pack(">I", 9)
        bhs[20:24] = b"\xff\xff\xff\xff"
        bhs[24:28] = struct.pack(">I", self.cmdsn)
        self.send(bhs, payload, bad_ddigest)

    def logout(self):
        bhs = bytearray(48)
        bhs[0] = 0x46
        bhs[1] = 0x80
        bhs[16:20] = struct.pack(">I", 11)
        bhs[24:28] = struct.pack(">I", self.cmdsn)
        self.send(bhs)
        try:
            self.recv()
        except (EOFError, OSError):
            pass


def main():
    port, target, initiator, action = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    c = Conn(port)
    if action == "truncated":
        c.s.sendall(bytes([0x43, 0x87]) + b"\0" * 20)
        print("sent")
        return
    if action == "badtext":
        print("status %04x" % c.login(target, initiator, text=b"InitiatorName\0"))
        return
    status = c.login(target, initiator, digests=(action == "ddigest"))
    if action == "login" or status != 0:
        print("status %04x" % status)
        return
    if action == "hold":
        print("ready", flush=True)
        deadline = time.time() + float(sys.argv[5])
        while time.time() < deadline:
            time.sleep(0.2)
        c.logout()
    elif action in ("lun1", "tur"):
        st, key, asc = c.scsi(1 if action == "lun1" else 0, bytes(6))
        print("scsi %d key %d asc %02x" % (st, key, asc))
    elif action == "oversize":
        bhs = bytearray(48)
        bhs[0] = 0x40
        bhs[1] = 0x80
        bhs[5:8] = (0xFFFFFF).to_bytes(3, "big")
        c.s.sendall(bytes(bhs))
        try:
            c.s.sendall(b"x" * 65536)
            c.recv()
            print("answered")
        except (EOFError, OSError):
            print("closed")
    elif action == "badop":
        bhs = bytearray(48)
        bhs[0] = 0x1F
        bhs[16:20] = struct.pack(">I", 5)
        c.send(bhs)
        rsp, _ = c.recv()
        print("reject %d" % rsp[2] if rsp[0] & 0x3F == 0x3F else "opcode %02x" % rsp[0])
    elif action == "ddigest":
        c.nop(bad_ddigest=True)
        rsp, _ = c.recv()
        print("reject %d" % rsp[2] if rsp[0] & 0x3F == 0x3F else "opcode %02x" % rsp[0])
        c.nop(b"again")
        rsp, data = c.recv()
        print("pong" if rsp[0] & 0x3F == 0x20 and data == b"again" else "no pong")


if __name__ == "__main__":
    try:
        main()
    except (EOFError, ConnectionError, socket.timeout) as e:
        print("closed (%s)" % type(e).__name__)
