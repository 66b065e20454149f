#!/usr/bin/env python3
# SPDX-License-Identifier: BSD-3-Clause
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
  session        log in, then commands from stdin, one a line, each
                 answered with one line when done:
                   write OFFSET FILE [LUN]
                                       FILE's bytes at byte OFFSET (a multiple
                                       of 512) of LUN (0), WRITE(10) with
                                       immediate data, no FUA: "written BYTES"
                   writediff NEW OLD   the 4 KiB blocks where NEW differs from
                                       OLD (same size): "written BLOCKS blocks"
                   sync                SYNCHRONIZE CACHE(10): "synced"
                   quit                log out: "bye"
                 a SCSI error: "scsi STATUS key K asc A", and the session ends
  pipeline FILE  log in, 48 READ(10) of 64 KiB pipelined (queue depth 48)
                 with an ORDERED TEST UNIT READY after the 24th, then an
                 ABORT TASK of the last read and a LOGICAL UNIT RESET: every
                 read answered once with FILE's bytes (or aborted: then never
                 answered), StatSN consecutive in arrival order, ExpCmdSN
                 never falling, the TUR after every earlier command and
                 before every later one, no answer after the reset's
                 response (queued reads it aborted are never answered):
                 "ok", else what went wrong
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

    def scsi(self, lun, cdb, edtl=0, itt=7, data=b""):
        bhs = bytearray(48)
        bhs[0] = 0x01
        if data:
            edtl = len(data)
        bhs[1] = 0x80 | (0x20 if data else 0x40 if edtl else 0)
        bhs[9] = lun
        bhs[16:20] = struct.pack(">I", itt)
        bhs[20:24] = struct.pack(">I", edtl)
        bhs[24:28] = struct.pack(">I", self.cmdsn)
        bhs[28:32] = struct.pack(">I", self.statsn)
        bhs[32 : 32 + len(cdb)] = cdb
        self.cmdsn += 1
        self.send(bhs, data)  # immediate data: at most FirstBurstLength (64 KiB)
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


def pipeline(c, path):
    """See the module's docstring (action pipeline)."""
    with open(path, "rb") as f:
        disk = f.read(48 * 65536 * 2)
    n, blk = 48, 128  # 128 blocks of 512 bytes: 64 KiB
    sent = {}
    order = []
    for i in range(n + 1):
        bhs = bytearray(48)
        bhs[0] = 0x01
        itt = 100 + i
        if i == 24:  # ORDERED TEST UNIT READY
            bhs[1] = 0x80 | 0x02
            cdb = bytes(6)
            edtl = 0
        else:
            bhs[1] = 0x80 | 0x40 | 0x01  # F, R, SIMPLE
            lba = (i * 2 * blk) % (len(disk) // 512 - blk)
            cdb = struct.pack(">BBIBHB", 0x28, 0, lba, 0, blk, 0)
            edtl = blk * 512
            sent[itt] = lba
        bhs[16:20] = struct.pack(">I", itt)
        bhs[20:24] = struct.pack(">I", edtl)
        bhs[24:28] = struct.pack(">I", c.cmdsn)
        bhs[28:32] = struct.pack(">I", c.statsn)
        bhs[32 : 32 + len(cdb)] = cdb
        c.cmdsn += 1
        c.send(bhs)
        order.append(itt)
    # ABORT TASK of the last read, then a LOGICAL UNIT RESET (both immediate).
    last = 100 + n
    for itt, fn, ref in ((900, 1, last), (901, 5, 0)):
        bhs = bytearray(48)
        bhs[0] = 0x42 | 0x40  # immediate
        bhs[1] = 0x80 | fn
        bhs[16:20] = struct.pack(">I", itt)
        bhs[20:24] = struct.pack(">I", ref)
        bhs[24:28] = struct.pack(">I", c.cmdsn)
        c.send(bhs)
    data = {}
    answered = []
    tmf = {}
    statsn, expcmd = c.statsn, 0
    while len(tmf) < 2:
        rsp, d = c.recv()
        op = rsp[0] & 0x3F
        itt = struct.unpack(">I", rsp[16:20])[0]
        has_status = op in (0x21, 0x22) or (op == 0x25 and rsp[1] & 0x01)
        if op == 0x25:
            off = struct.unpack(">I", rsp[40:44])[0]
            data.setdefault(itt, bytearray(65536))[off : off + len(d)] = d
        if has_status:
            sn, e, m = struct.unpack(">III", rsp[24:36])
            if sn != statsn:
                return "StatSN %d where %d was next (ITT %d)" % (sn, statsn, itt)
            statsn += 1
            if (e - expcmd) & 0x80000000 and expcmd:
                return "ExpCmdSN fell from %d to %d" % (expcmd, e)
            expcmd = e
            if ((m + 1 - e) & 0xFFFFFFFF) & 0x80000000:
                return "MaxCmdSN %d below ExpCmdSN %d - 1" % (m, e)
            if op == 0x22:
                tmf[itt] = rsp[2]
                continue
            if 901 in tmf:
                return "ITT %d answered after the LOGICAL UNIT RESET's response" % itt
            if rsp[3] != 0:
                return "ITT %d: status %d" % (itt, rsp[3])
            if itt in answered:
                return "ITT %d answered twice" % itt
            answered.append(itt)
    if tmf[900] == 0 and last in answered:
        return "ABORT TASK said aborted, yet ITT %d was answered" % last
    if tmf[900] == 1 and last not in answered:
        return "ABORT TASK said no such task, yet ITT %d was never answered" % last
    # Commands before the ORDERED TUR and the TUR itself ran before the reader
    # took the TMFs: answered.  Later ones may have been aborted by the reset.
    want = set(i for i in order if i <= 124)
    if not want <= set(answered):
        return "unanswered: %s" % sorted(want - set(answered))
    tur = answered.index(124)
    for itt in order:
        if itt < 124 and answered.index(itt) > tur:
            return "ITT %d (before the ORDERED TUR) answered after it" % itt
        if itt > 124 and itt in answered and answered.index(itt) < tur:
            return "ITT %d (after the ORDERED TUR) answered before it" % itt
    for itt, lba in sent.items():
        if itt in answered and bytes(data.get(itt, b"")) != disk[lba * 512 : lba * 512 + 65536]:
            return "ITT %d: wrong data for LBA %d" % (itt, lba)
    c.statsn = statsn
    st, _, _ = c.scsi(0, bytes(6), itt=950)
    return "ok" if st == 0 else "TEST UNIT READY after the reset: status %d" % st


WRITE_PIECE = 32768  # immediate data a command carries


def write_at(c, offset, data, lun=0):
    """WRITE(10) of DATA at byte OFFSET; (status, key, asc) of the first failure or None."""
    for i in range(0, len(data), WRITE_PIECE):
        piece = data[i : i + WRITE_PIECE]
        lba = (offset + i) // 512
        cdb = struct.pack(">BBIBH", 0x2A, 0, lba, 0, len(piece) // 512)
        st, key, asc = c.scsi(lun, cdb, data=piece, itt=100 + i // WRITE_PIECE % 1000)
        if st != 0:
            return st, key, asc
    return None


def session(c):
    for line in sys.stdin:
        words = line.split()
        failed = None
        if not words:
            continue
        if words[0] == "write":
            with open(words[2], "rb") as f:
                data = f.read()
            failed = write_at(c, int(words[1]), data, int(words[3]) if len(words) > 3 else 0)
            done = "written %d" % len(data)
        elif words[0] == "writediff":
            with open(words[1], "rb") as f:
                new = f.read()
            with open(words[2], "rb") as f:
                old = f.read()
            n = 0
            for off in range(0, len(new), 4096):
                if new[off : off + 4096] != old[off : off + 4096]:
                    failed = write_at(c, off, new[off : off + 4096])
                    n += 1
                    if failed:
                        break
            done = "written %d blocks" % n
        elif words[0] == "sync":
            st, key, asc = c.scsi(0, bytes([0x35]) + bytes(9))
            failed = (st, key, asc) if st else None
            done = "synced"
        elif words[0] == "quit":
            c.logout()
            print("bye", flush=True)
            return
        else:
            print("unknown command %s" % words[0], flush=True)
            return
        if failed:
            print("scsi %d key %d asc %02x" % failed, flush=True)
            return
        print(done, flush=True)


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
    elif action == "pipeline":
        print(pipeline(c, sys.argv[5]))
    elif action == "session":
        print("ready", flush=True)
        session(c)
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
