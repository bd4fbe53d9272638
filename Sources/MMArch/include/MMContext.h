#ifndef MMCONTEXT_H
#define MMCONTEXT_H

#include <stddef.h>
#include <stdint.h>

/// User-level execution contexts: the explorer runs every model thread of an execution as one
/// of these on its own OS thread (the carrier), so a scheduling hand-off is a context switch in
/// one thread instead of a wake-up of another CPU.
///
/// A context with a stack runs `entry(arg)` from its first switch-in; `entry` must never return
/// (it switches away for good). The carrier's own context has no stack: switching to it resumes
/// the carrier where it switched out.
///
/// Each context with a stack keeps its own set of Swift dynamic-exclusivity accesses: a switch
/// takes the outgoing context's accesses off the carrier thread's set and puts the incoming
/// one's on (the Swift runtime's task hooks, as its concurrency runtime does for tasks), so an
/// access begun in one model thread is never seen as another's.
typedef struct mm_context mm_context;

/// A context with a stack of `stack_size` bytes (rounded up to pages; a guard page below it,
/// reserved but not committed until touched). NULL when the memory cannot be had.
mm_context *mm_context_create(size_t stack_size);

/// The calling thread's own context (no stack): what a switch back to the carrier resumes.
mm_context *mm_context_create_carrier(void);

/// Prepares a context with a stack to run `entry(arg)` at its next switch-in, from the top of
/// its stack (a context reused after its previous entry switched away for good).
void mm_context_prepare(mm_context *c, void (*entry)(void *), void *arg);

/// Saves the calling context into `from` and resumes `to`; returns when something switches to
/// `from` again. Both on the calling OS thread.
void mm_context_switch(mm_context *from, mm_context *to);

/// Frees a context (its stack too). Only for a context that is not running and that nothing
/// will resume.
void mm_context_destroy(mm_context *c);

#endif
