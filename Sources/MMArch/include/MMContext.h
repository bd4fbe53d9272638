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
/// access begun in one model thread is never seen as another's. Those hooks are exports of
/// libswiftCore without a public header (declared in Context.c): a runtime that changed them
/// would have to be followed here. The carrier's own accesses (open across its switch into the
/// contexts) stay visible to every context, as a thread's are to the tasks it runs: a context
/// touching what the carrier has open traps, where an OS thread would not have been checked.
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

/// The carrier's OS thread id while contexts run on it (0: none). Every thread reads it (the
/// identity of the calling model thread depends on it); only the carrier finds its own id there.
extern uint64_t mm_context_carrier_id;
static inline uint64_t mm_context_carrier(void) { return __atomic_load_n(&mm_context_carrier_id, __ATOMIC_RELAXED); }
static inline void mm_context_set_carrier(uint64_t id) { __atomic_store_n(&mm_context_carrier_id, id, __ATOMIC_RELAXED); }

/// Frees a context (its stack too). Only for a context that is not running and that nothing
/// will resume.
void mm_context_destroy(mm_context *c);

#endif
