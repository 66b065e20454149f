#!/usr/bin/perl
# SPDX-License-Identifier: BSD-3-Clause
# scripts/check-clientdir.pl FILE...: make check's rule that lib/clientdir.c alone
# formats a path under STATE/clients.  It reads every call of tb_path, snprintf,
# asprintf, strcat or strcpy (parentheses balanced, across lines) and fails,
# naming file and line, when a string literal in it names the client
# directory's layout: clients/, %s/overlay, sessions, quarantine, good, trash,
# disks, seq, a client record (mailbox.json, health.json ...) or lock.  A
# message (tb_error, log_msg, a reply) may name those files: it is no such call.
use strict;
use warnings;
local $/;
my $bad = 0;
my $call = qr/\b(?:tb_path|snprintf|asprintf|strcat|strcpy)\s*(\((?:[^()"']++|"(?:[^"\\]|\\.)*+"|'(?:[^'\\]|\\.)*+'|(?1))*\))/;
my $layout = qr/clients\/|\/clients\b|%s\/(?:overlay|sessions|quarantine|good|trash|disks|seq)\b|(?:mailbox|session|live|health|watchdog|maintenance|schedule|note)\.json|(?:mailbox|disks)\.lock|%s\.(?:spare|restore)\b|%llu\/(?:overlay|note)/;
for my $f (@ARGV) {
  open my $h, '<', $f or die "$f: $!";
  my $text = <$h>;
  while ($text =~ /$call/g) {
    my ($args, $end) = ($1, pos($text));
    my @lits = $args =~ /"((?:[^"\\]|\\.)*)"/g;
    next unless grep { /$layout/ } @lits;
    my $line = 1 + (substr($text, 0, $end - length $args) =~ tr/\n//);
    print "$f:$line: formats a clients/ path (lib/clientdir.h owns them)\n";
    $bad = 1;
  }
}
exit $bad;
