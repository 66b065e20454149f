/* SPDX-License-Identifier: BSD-3-Clause */
/* tabula-iscsid: the SCSI block device (SBC-3/SPC-4 subset) over a live connection.
 *
 * A client's first disk is LUN 0, its further disks (conf.h "disks") LUN 1,
 * 2... in the order of its configuration.  Each logical unit: 512-byte logical blocks, the
 * overlay's block (4 KiB by default) reported as the physical block and the
 * unmap granularity.  Reads and writes go straight to tb_conn_* (live.h), so
 * every session rule, guard and counter is the NBD frontend's.  A command is
 * executed by isc_scsi_exec() on the data the initiator sent (DOUT) into the
 * buffer the caller provides (DIN); errors become fixed-format sense data:
 *
 *   EPERM  (a protected region)      DATA PROTECT 0x27/0x00
 *   EROFS  (read-only connection)    DATA PROTECT 0x27/0x00
 *   ENOSPC (quota, reserve)          DATA PROTECT 0x27/0x07 SPACE ALLOCATION FAILED
 *   EIO    (read)                    MEDIUM ERROR 0x11/0x00 UNRECOVERED READ ERROR
 *   EIO    (write)                   MEDIUM ERROR 0x0c/0x00 WRITE ERROR
 *   ESHUTDOWN (the boot ended)       the connection is dropped (task->drop)
 */
#ifndef ISC_SCSI_H
#define ISC_SCSI_H

#include <stdbool.h>
#include <stdint.h>

#define ISC_LBS 512u
#define ISC_MAX_XFER_BLOCKS 16384u    /* 8 MiB per command (VPD B0) */
#define ISC_MAX_UNMAP_BLOCKS 1048576u /* 512 MiB per UNMAP */
#define ISC_MAX_WS_BLOCKS ISC_MAX_XFER_BLOCKS
#define ISC_MAX_UNMAP_DESC 256u
#define ISC_SENSE_LEN 18
#define ISC_MAX_LUNS 32 /* a client's disks served as LUNs: LUN 0 and 31 more */

enum { ISC_GOOD = 0x00, ISC_CHECK_CONDITION = 0x02, ISC_BUSY = 0x08 };

struct tb_conn;

struct isc_lu {
  struct tb_conn *conn;
  uint64_t blocks;      /* logical blocks of ISC_LBS bytes */
  uint32_t phys_blocks; /* logical blocks per overlay block (power of two) */
  char serial[65];      /* the client id */
  char target_name[256];
  uint8_t naa[16]; /* NAA 6 identifier derived from the target name (and disk) */
  bool read_only;
  uint32_t lun_mask; /* the target's LUNs (bit N: LUN N), for REPORT LUNS */
};

struct isc_task {
  const uint8_t *cdb; /* 16 bytes */
  const uint8_t *dout;
  uint32_t dout_len;
  uint8_t *din; /* caller's buffer of din_cap bytes */
  uint32_t din_cap;
  /* results */
  uint32_t din_len; /* bytes of DIN filled */
  uint64_t wanted;  /* bytes the CDB asks to transfer (for residuals) */
  uint8_t status;
  uint8_t sense[ISC_SENSE_LEN];
  uint32_t sense_len;
  bool drop; /* the boot ended: drop the connection */
};

/* ID: the client's id for LUN 0, its disk's "ID/DISK" for another. */
void isc_lu_init(struct isc_lu *lu, struct tb_conn *conn, const char *id, const char *target_name,
                 bool read_only);
void isc_scsi_exec(struct isc_lu *lu, struct isc_task *t);
/* A command to a LUN that does not exist (INQUIRY and REPORT LUNS still work). */
void isc_scsi_exec_nolun(struct isc_lu *lu, struct isc_task *t);
/* Fixed-format sense into T, status CHECK CONDITION. */
void isc_sense(struct isc_task *t, uint8_t key, uint8_t asc, uint8_t ascq);

#endif
