#!/usr/bin/perl
# SPDX-License-Identifier: BSD-3-Clause
# scripts/check-clientdir.pl FILE...: make check's rule that lib/clientdir.c alone
# formats a path under STATE/clients.  It reads every call of tb_path, snprintf,
# asprintf, strcat or strcpy (parentheses balanced, across lines) and fails,
# naming file and line, when
#  - a string literal in it names the client directory's layout: clients/,
#    %s/overlay, sessions, quarantine, good, trash, disks, seq, a client record
#    (mailbox.json, health.json ...) or lock; a message (tb_error, log_msg, a
#    reply) may name those files: it is no such call;
#  - or its format joins onto a path that a tb_clientdir_* call filled in the
#    same function ("%s/%llu" after tb_clientdir_path(..., TB_CF_TRASH, dir, ...)
#    with dir first): a numbered entry or a name a walk listed goes through
#    tb_clientdir_session, tb_clientdir_entry and friends.  A function here is
#    what lies between two closing braces in column 0 (clang-format's layout);
#    a path handed in as a parameter is beyond this check.
use strict;
use warnings;
local $/;
my $bad = 0;
my $parens = qr/(\((?:[^()"']++|"(?:[^"\\]|\\.)*+"|'(?:[^'\\]|\\.)*+'|(?-1))*\))/;
my $call = qr/\b(?:tb_path|snprintf|asprintf|strcat|strcpy)\s*$parens/;
my $clientdir_call = qr/\btb_clientdir_\w+\s*$parens/;
my $layout = qr/clients\/|\/clients\b|%s\/(?:overlay|sessions|quarantine|good|trash|disks|seq)\b|(?:mailbox|session|live|health|watchdog|maintenance|schedule|note)\.json|(?:mailbox|disks)\.lock|%s\.(?:spare|restore)\b|%llu\/(?:overlay|note)/;
my $lit = qr/"(?:[^"\\]|\\.)*"/;
for my $f (@ARGV) {
  open my $h, '<', $f or die "$f: $!";
  my $text = <$h>;
  my $start = 0;
  for my $fn (split /(?<=\n\}\n)/, $text) {
    # The buffers tb_clientdir_* calls fill here: the argument before the length.
    my %clientdir_buf;
    while ($fn =~ /$clientdir_call/g) {
      my @args = split /,/, substr($1, 1, -1);
      next if @args < 3;
      (my $buf = $args[-2]) =~ s/^\s*&?|\s+$//g;
      $clientdir_buf{$buf} = 1 if $buf =~ /^[\w.>-]+$/;
    }
    while ($fn =~ /$call/g) {
      my ($args, $end) = ($1, pos($fn));
      my @lits = $args =~ /"((?:[^"\\]|\\.)*)"/g;
      my $why;
      if (grep { /$layout/ } @lits) {
        $why = "formats a clients/ path";
      } elsif (@lits && $lits[0] =~ /^%s\// && $args =~ /^[^"]*$lit\s*,\s*([\w.>-]+)\s*[,)]/
               && $clientdir_buf{$1}) {
        $why = "joins a path onto $1, which tb_clientdir_* made";
      }
      next unless $why;
      my $line = 1 + (substr($text, 0, $start + $end - length $args) =~ tr/\n//);
      print "$f:$line: $why (lib/clientdir.h owns them)\n";
      $bad = 1;
    }
    $start += length $fn;
  }
}
exit $bad;
