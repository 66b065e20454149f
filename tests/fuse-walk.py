#!/usr/bin/env python3
# SPDX-License-Identifier: BSD-3-Clause
"""tests/fuse-walk.py: the ground truth the view is held to.

  walk ROOT [--strip-target P] [--leap-2100]
                                 every entry under ROOT as JSON lines, sorted by
                                 path: type, size, mode, nlink, uid, gid, mtime
                                 (ns), rdev, symlink target, xattrs (name ->
                                 sha256), hard-link identity (the first path of
                                 the inode), sha256 of the content
  compare REF VIEW [--ignore F,...] [--ignore-path RE]
                                 the entries (and fields) that differ between
                                 two walks; exit status 1 if any
  changes BEFORE AFTER VOLUME    changes.txt lines (kind type size path, sorted
                                 like the view sorts them) that the documented
                                 rule gives for two walks of one volume
  changes-txt FILE               a changes.txt as those lines: comments out,
                                 columns single-spaced, directory sizes "*"
  push OLD NEW TARGET [BS]       write into TARGET (a client's disk exposed as
                                 a file) the BS-byte blocks (4096) where NEW
                                 differs from OLD: the dirty map is then just
                                 what changed

walk's --strip-target P: symlink targets under P (ntfs-3g's own mount point,
which it puts in front of absolute NTFS targets) are made volume-rooted, as
the view shows them.  --leap-2100: the reference reader takes 2100 for a leap
year (mtools, exfat-fuse), so its times after 2100-02-28 are a day late.

The rule (tabula-fuse(1), CHANGES.TXT): a path present only after is
created, only before deleted; a path in both is changed if its type changed
or, for anything but a directory, its size, mtime, mode, owner, content
(sha256), xattrs (ext) or alternate data streams (NTFS, seen through
ntfs-3g's ntfs.streams.list) changed.  nlink, atime, ctime and the inode
number do not count: a link added or removed is its own created or deleted
line, a file deleted and made again identical is no change.
"""
import hashlib
import json
import os
import re
import stat
import sys

TYPES = {
    stat.S_IFREG: "file",
    stat.S_IFDIR: "dir",
    stat.S_IFLNK: "symlink",
    stat.S_IFCHR: "chardev",
    stat.S_IFBLK: "blockdev",
    stat.S_IFIFO: "fifo",
    stat.S_IFSOCK: "socket",
}


SAMPLE = 1 << 20
WHOLE = 64 << 20


def sha256_file(path, size):
    """The content's sha256; files over WHOLE (huge sparse ones) are hashed
    from 1 MiB samples at 0, at every power of two and at the end."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if size <= WHOLE:
            while True:
                b = f.read(SAMPLE)
                if not b:
                    break
                h.update(b)
        else:
            offs = {0, max(0, size - SAMPLE)}
            o = SAMPLE
            while o < size:
                offs.add(o)
                o *= 2
            for o in sorted(offs):
                f.seek(o)
                h.update(b"%d:" % o + f.read(SAMPLE))
    return h.hexdigest()


def xattrs(path):
    out = {}
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}  # no xattr support (exfat-fuse): none
    for n in sorted(names):
        if n.startswith("system.ntfs") or n == "system.posix_acl_access":
            continue
        try:
            out[n] = hashlib.sha256(os.getxattr(path, n, follow_symlinks=False)).hexdigest()
        except OSError:
            out[n] = "unreadable"
    return out


def walk(root, hash_content=True):
    ents = []
    first = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            p = os.path.join(dirpath, name)
            rel = "/" + os.path.relpath(p, root)
            st = os.lstat(p)
            t = TYPES.get(stat.S_IFMT(st.st_mode), "other")
            e = {
                "path": rel,
                "type": t,
                "size": st.st_size if t != "dir" else None,
                "dirsize": st.st_size if t == "dir" else None,
                "mode": "%04o" % stat.S_IMODE(st.st_mode),
                "nlink": st.st_nlink,
                "uid": st.st_uid,
                "gid": st.st_gid,
                "mtime": st.st_mtime_ns,
                "rdev": "%d,%d" % (os.major(st.st_rdev), os.minor(st.st_rdev))
                if t in ("chardev", "blockdev") else None,
                "target": os.readlink(p) if t == "symlink" else None,
                "xattrs": xattrs(p) if t != "symlink" else None,
                "link": None,
                "sha256": None,
            }
            if t != "dir":
                key = (st.st_dev, st.st_ino)
                if st.st_nlink > 1:
                    e["link"] = first.setdefault(key, rel)
            if t == "file" and hash_content:
                try:
                    e["sha256"] = sha256_file(p, st.st_size)
                except OSError as err:
                    e["sha256"] = "error: %s" % err.strerror
            ents.append(e)
    # Hard-link identity: the first path of each inode, in path order.
    ents.sort(key=lambda e: e["path"])
    return ents


def load(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def compare(ref, view, ignore, ignore_path):
    rx = re.compile(ignore_path) if ignore_path else None
    a = {e["path"]: e for e in ref if not (rx and rx.search(e["path"]))}
    b = {e["path"]: e for e in view if not (rx and rx.search(e["path"]))}
    bad = 0
    for p in sorted(set(a) | set(b)):
        if p not in b:
            print("only in the reference: %s %s" % (a[p]["type"], p))
            bad += 1
            continue
        if p not in a:
            print("only in the view: %s %s" % (b[p]["type"], p))
            bad += 1
            continue
        for k in a[p]:
            if k in ignore or k == "path":
                continue
            if a[p].get(k) != b[p].get(k):
                print("%s: %s: reference %r, view %r" % (p, k, a[p].get(k), b[p].get(k)))
                bad += 1
    return bad


LEAP_2100_NS = 4107542400 * 10**9  # 2100-03-01 00:00 UTC
COUNTED = ("size", "mtime", "mode", "uid", "gid", "sha256", "xattrs", "target", "rdev")


def changes(before, after, volume, content_only):
    a = {e["path"]: e for e in before}
    b = {e["path"]: e for e in after}
    lines = []
    for p in sorted(set(a) | set(b)):
        if p not in a:
            kind, e = "created", b[p]
        elif p not in b:
            kind, e = "deleted", a[p]
        else:
            x, y = a[p], b[p]
            if x["type"] != y["type"]:
                kind = "changed"
            elif x["type"] == "dir":
                continue
            elif any(x.get(k) != y.get(k) for k in COUNTED):
                kind = "changed"
            else:
                continue
            e = y
        size = e["size"] if e["type"] != "dir" else e.get("viewsize", 0)
        lines.append((volume + p, kind, e["type"], size))
    lines.sort(key=lambda t: t[0].encode())
    return ["%s %s %s %s" % (k, t, "*" if t == "dir" else s, p) for p, k, t, s in lines]


def push(old, new, target, bs):
    """Write the blocks of NEW that differ from OLD (same size) into TARGET."""
    n = 0
    chunk = 256 * bs
    with open(old, "rb") as a, open(new, "rb") as b, open(target, "r+b") as t:
        off = 0
        while True:
            x, y = a.read(chunk), b.read(chunk)
            if not y:
                break
            if x != y:
                for i in range(0, len(y), bs):
                    if x[i:i + bs] != y[i:i + bs]:
                        t.seek(off + i)
                        t.write(y[i:i + bs])
                        n += 1
            off += len(y)
        t.flush()
        os.fsync(t.fileno())
    return n


def main():
    cmd = sys.argv[1]
    if cmd == "walk":
        root = sys.argv[2]
        ents = walk(root)
        args = sys.argv[3:]
        strip = args[args.index("--strip-target") + 1] if "--strip-target" in args else None
        for e in ents:
            if strip and e["target"] and e["target"].startswith(strip + "/"):
                e["target"] = e["target"][len(strip):]
                e["size"] = len(e["target"].encode())
            if "--leap-2100" in args and e["mtime"] >= LEAP_2100_NS:
                e["mtime"] -= 86400 * 10**9
        for e in ents:
            print(json.dumps(e, sort_keys=True))
    elif cmd == "compare":
        ignore, ignore_path = set(), None
        args = sys.argv[4:]
        while args:
            if args[0] == "--ignore":
                ignore |= set(args[1].split(","))
            elif args[0] == "--ignore-path":
                ignore_path = args[1]
            args = args[2:]
        sys.exit(1 if compare(load(sys.argv[2]), load(sys.argv[3]), ignore, ignore_path) else 0)
    elif cmd == "changes":
        for line in changes(load(sys.argv[2]), load(sys.argv[3]), sys.argv[4], None):
            print(line)
    elif cmd == "changes-txt":
        with open(sys.argv[2], encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                if line.startswith("#") or not line.strip():
                    continue
                kind, t, size, path = line.rstrip("\n").split(None, 3)
                print("%s %s %s %s" % (kind, t, "*" if t == "dir" else size, path))
    elif cmd == "push":
        bs = int(sys.argv[5]) if len(sys.argv) > 5 else 4096
        print("%d blocks written" % push(sys.argv[2], sys.argv[3], sys.argv[4], bs))
    else:
        sys.exit("usage: fuse-walk.py walk ROOT | compare REF VIEW | changes BEFORE AFTER VOLUME"
                 " | changes-txt FILE | push OLD NEW TARGET [BS]")


if __name__ == "__main__":
    main()
