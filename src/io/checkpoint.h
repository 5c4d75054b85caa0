// Checkpoints, weights files and the run folder that rotates them: one include for code that uses
// several of these ideas (the trainer, the CLI). Each lives in a file of its own:
//   io/checkpoint_format.h      the checkpoint and weights file layout; writing and loading
//   io/checkpoint_validation.h  what makes such a file valid (format, metadata, checksums, names)
//   io/checkpoint_dir.h         a run folder's ckpt-* rotation, `latest`, best, `--resume auto`
//   io/checkpoint_inspect.h     the `dptrain inspect` report
// Code that needs only one of them includes that one.
#pragma once

#include "io/checkpoint_dir.h"
#include "io/checkpoint_format.h"
#include "io/checkpoint_inspect.h"
#include "io/checkpoint_validation.h"
