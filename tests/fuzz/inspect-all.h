/* SPDX-License-Identifier: BSD-3-Clause */
/* The geometry fuzzers' view of lib/inspect-*.c: every file of the
 * inspection library in one translation unit, so the fuzzers reach the
 * files' static parsers (ext_geometry, geom_finish, ext_xattr_entries...).
 * The files share no static name (they were one file), so they include
 * together. */
#ifndef TB_FUZZ_INSPECT_ALL_H
#define TB_FUZZ_INSPECT_ALL_H

#include "../../lib/inspect-disk.c"
#include "../../lib/inspect-handle.c"
#include "../../lib/inspect-list.c"
#include "../../lib/inspect-ext.c"
#include "../../lib/inspect-meta.c"
#include "../../lib/inspect-file.c"
#include "../../lib/inspect-walk.c"
#include "../../lib/inspect-worker.c"
#include "../../lib/inspect-request.c"
#include "../../lib/inspect-diff.c"
#include "../../lib/inspect-geom.c"
#include "../../lib/inspect-index.c"
#include "../../lib/ntfs-mft.c"

#endif
