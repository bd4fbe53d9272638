import Devices
import MMCore

/// What a command accepts: the one table that `hmm check` and the interpreter both read.
struct CommandSpec {
    /// The kinds of names a script declares.
    enum Namespace: String, CaseIterable {
        case process, device, file, buffer, gup, svm, nic, mr
        var created: String {
            switch self {
            case .process: return "a process created with 'process' or 'fork'"
            case .device: return "a device opened with 'open'"
            case .file: return "a file created with 'file'"
            case .buffer: return "a buffer created with 'buffer' or bound with '->'"
            case .gup: return "pages bound by 'gup'"
            case .svm: return "an SVM device opened with 'svm_open'"
            case .nic: return "an ODP NIC opened with 'odp_open'"
            case .mr: return "a memory region registered with 'odp_reg'"
            }
        }
    }

    /// The kind of one argument value.
    enum Value {
        case expr                 // an integer expression
        case constant             // an integer expression without names (checked before running)
        case name(Namespace)      // an existing name
        case newName(Namespace)   // a name this command declares
        case pattern
        case prot
        case advice
        case words                // free text (print, skip)
    }

    /// What may follow `expect`.
    enum Expect {
        case none
        case outcome              // ok | ERRNO | ok|ERRNO…, errno=ERRNO
        case signal               // ok | segv | bus | oom and alternatives (stores)
        case value                // a value or a signal (loads and atomics)
        case check                // a pattern or a signal (check)
        case pread                // a pattern or an outcome, len=N
        case device               // ret= cpages= faults= mirror= bytes=
        case pagemap              // present | swap | none | file | zero, or an outcome
        case keyed(String)        // KEY=N (migrated=, old=), or an outcome
        case ptes                 // entry kinds
        case counters(Set<String>) // key=N for the named counters
    }

    enum Bind { case none, optional, required }

    /// Positional values in order; the first `required` must be given.
    var positionals: [(String, Value)]
    var required: Int
    var keys: [String: Value] = [:]
    var flags: Set<String> = []
    var bind: Bind = .none
    /// What `-> NAME` declares: a region (variables NAME, NAME.size, NAME.end, NAME.pages) or a name.
    var binds: Namespace? = nil
    var expect: Expect = .none
    /// Whether the command acts in a process (and takes `proc=`).
    var inProcess: Bool { keys["proc"] != nil }

    static let proc: [String: Value] = ["proc": .name(.process)]

    static func spec(_ name: String) -> CommandSpec? { table[name] }

    static let deviceCommandSpec = CommandSpec(
        positionals: [("a device", .name(.device)), ("an address", .expr), ("a page count", .expr)], required: 3,
        keys: ["buffer": .name(.buffer), "from": .pattern, "proc": .name(.process)], bind: .optional, binds: .buffer, expect: .device)

    static let table: [String: CommandSpec] = {
        var t: [String: CommandSpec] = [
            "machine": CommandSpec(positionals: [], required: 0, keys: ["memory": .constant, "swap": .constant, "swap_file": .constant, "page_cluster": .constant, "oom_killer": .constant, "max_map_count": .constant]),
            "process": CommandSpec(positionals: [("a process name", .newName(.process))], required: 1),
            "use": CommandSpec(positionals: [("a process name", .name(.process))], required: 1),
            "fork": CommandSpec(positionals: [("a parent process", .name(.process))], required: 0, bind: .required, binds: .process, expect: .outcome),
            "exit": CommandSpec(positionals: [("a process", .name(.process))], required: 0),
            "mmap": CommandSpec(positionals: [("a size", .expr)], required: 1,
                                keys: ["prot": .prot, "file": .name(.file), "offset": .expr, "fixed": .expr, "hint": .expr, "proc": .name(.process),
                                       "hugetlb": .expr],
                                flags: ["shared", "private", "populate", "noreplace", "hugetlb"], bind: .optional, expect: .outcome),
            "munmap": CommandSpec(positionals: [("an address", .expr), ("a length", .expr)], required: 2, keys: proc, expect: .outcome),
            "mprotect": CommandSpec(positionals: [("an address", .expr), ("a length", .expr), ("a protection", .prot)], required: 3, keys: proc, expect: .outcome),
            "madvise": CommandSpec(positionals: [("an address", .expr), ("a length", .expr), ("an advice", .advice)], required: 3, keys: proc, expect: .outcome),
            "mremap": CommandSpec(positionals: [("an address", .expr), ("the old length", .expr), ("the new length", .expr)], required: 3,
                                  keys: ["fixed": .expr, "proc": .name(.process)], flags: ["maymove", "dontunmap"], bind: .optional, expect: .outcome),
            "file": CommandSpec(positionals: [("a file name", .newName(.file))], required: 1, keys: ["size": .expr]),
            "pwrite": CommandSpec(positionals: [("a file", .name(.file)), ("an offset", .expr), ("a length", .expr), ("a pattern", .pattern)], required: 4,
                                  keys: ["index": .expr], expect: .outcome),
            "pread": CommandSpec(positionals: [("a file", .name(.file)), ("an offset", .expr), ("a length", .expr)], required: 3,
                                 keys: ["index": .expr], expect: .pread),
            "ftruncate": CommandSpec(positionals: [("a file", .name(.file)), ("a size", .expr)], required: 2, expect: .outcome),
            "fill": CommandSpec(positionals: [("an address", .expr), ("a length", .expr), ("a pattern", .pattern)], required: 3,
                                keys: ["index": .expr, "proc": .name(.process)], expect: .signal),
            "check": CommandSpec(positionals: [("an address", .expr), ("a length", .expr), ("a pattern", .pattern)], required: 2,
                                 keys: ["index": .expr, "proc": .name(.process)], expect: .check),
            "load": CommandSpec(positionals: [("an address", .expr)], required: 1, keys: proc, flags: ["u8", "u16", "u32", "u64"], expect: .value),
            "store": CommandSpec(positionals: [("an address", .expr), ("a value", .expr)], required: 2, keys: proc, flags: ["u8", "u16", "u32", "u64"], expect: .signal),
            "cmpxchg": CommandSpec(positionals: [("an address", .expr), ("the expected value", .expr), ("the new value", .expr)], required: 3,
                                   keys: proc, flags: ["u64"], expect: .value),
            "fetch_add": CommandSpec(positionals: [("an address", .expr), ("a delta", .expr)], required: 2, keys: proc, flags: ["u64"], expect: .value),
            "buffer": CommandSpec(positionals: [("a buffer name", .newName(.buffer)), ("a size", .expr)], required: 2, keys: ["fill": .pattern]),
            "check_buffer": CommandSpec(positionals: [("a buffer", .name(.buffer)), ("an offset", .expr), ("a length", .expr), ("a pattern", .pattern)],
                                        required: 4, keys: ["index": .expr]),
            "open": CommandSpec(positionals: [("a device number (0–3)", .expr)], required: 1, keys: proc, bind: .required, binds: .device, expect: .outcome),
            "close": CommandSpec(positionals: [("a device", .name(.device))], required: 1),
            "mmap_device": CommandSpec(positionals: [("a device", .name(.device)), ("a size", .expr)], required: 2,
                                       keys: ["prot": .prot, "proc": .name(.process)], flags: ["shared", "private"], bind: .optional, expect: .outcome),
            "release": CommandSpec(positionals: [("a device", .name(.device)), ("an address", .expr), ("a page count", .expr)], required: 1,
                                   keys: proc, expect: .device),
            "flags": CommandSpec(positionals: [("a device", .name(.device)), ("a flags value", .expr)], required: 2, keys: proc, expect: .device),
            "gup": CommandSpec(positionals: [("an address", .expr), ("a page count", .expr)], required: 2, keys: proc,
                               flags: ["write", "pin", "longterm"], bind: .required, binds: .gup, expect: .outcome),
            "put": CommandSpec(positionals: [("a name bound by 'gup'", .name(.gup))], required: 1),
            "unpin": CommandSpec(positionals: [("a name bound by 'gup'", .name(.gup))], required: 1),
            "pagemap": CommandSpec(positionals: [("an address", .expr), ("a page count", .expr)], required: 1, keys: proc, expect: .pagemap),
            "migrate_pages": CommandSpec(positionals: [("an address", .expr), ("a page count", .expr)], required: 1, keys: proc, flags: ["offline"], expect: .keyed("migrated")),
            "invariants": CommandSpec(positionals: [], required: 0),
            "sleep": CommandSpec(positionals: [("nanoseconds", .expr)], required: 1),
            "print": CommandSpec(positionals: [("words", .words)], required: 0),
            "skip": CommandSpec(positionals: [("a reason", .words)], required: 0),
            // Inspection.
            "vmas": CommandSpec(positionals: [], required: 0, keys: proc, expect: .counters(["count"])),
            "ptes": CommandSpec(positionals: [("an address", .expr), ("a page count", .expr)], required: 1, keys: proc, expect: .ptes),
            // The GPU-like SVM device (docs/svm.md): open one on a process, run kernels on it.
            "svm_open": CommandSpec(positionals: [], required: 0, keys: ["memory": .expr, "proc": .name(.process)],
                                    flags: ScenarioInterpreter.svmPolicyFlags, bind: .required, binds: .svm, expect: .outcome),
            "svm_policy": CommandSpec(positionals: [("an SVM device", .name(.svm))], required: 1, flags: ScenarioInterpreter.svmPolicyFlags),
            "svm_fill": CommandSpec(positionals: [("an SVM device", .name(.svm)), ("an address", .expr), ("a length", .expr), ("a pattern", .pattern)],
                                    required: 4, keys: ["engines": .expr, "index": .expr], expect: .outcome),
            "svm_check": CommandSpec(positionals: [("an SVM device", .name(.svm)), ("an address", .expr), ("a length", .expr), ("a pattern", .pattern)],
                                     required: 4, keys: ["engines": .expr, "index": .expr], expect: .outcome),
            "svm_add": CommandSpec(positionals: [("an SVM device", .name(.svm)), ("an address", .expr), ("a delta", .expr)], required: 3,
                                   keys: ["times": .expr, "engines": .expr], expect: .outcome),
            "svm_run": CommandSpec(positionals: [("an SVM device", .name(.svm))], required: 1,
                                   keys: ["pages": .expr, "engines": .expr, "rounds": .expr, "cpu_threads": .expr],
                                   flags: Set(SVMWorkloadKind.allCases.map(\.rawValue)), expect: .outcome),
            "svm_stats": CommandSpec(positionals: [("an SVM device", .name(.svm))], required: 1,
                                     expect: .counters(Set(SVMStats.Counter.allCases.map(\.description)))),
            "svm_close": CommandSpec(positionals: [("an SVM device", .name(.svm))], required: 1),
            // The RDMA NIC with on-demand paging (docs/odp.md).
            "odp_open": CommandSpec(positionals: [], required: 0, bind: .required, binds: .nic),
            "odp_reg": CommandSpec(positionals: [("an ODP NIC", .name(.nic)), ("an address", .expr), ("a length", .expr)], required: 3,
                                   keys: ["proc": .name(.process)], flags: ["pinned", "read_only"], bind: .required, binds: .mr,
                                   expect: .outcome),
            "odp_reg_implicit": CommandSpec(positionals: [("an ODP NIC", .name(.nic))], required: 1, keys: ["proc": .name(.process)],
                                            flags: ["read_only"], bind: .required, binds: .mr, expect: .outcome),
            "odp_dereg": CommandSpec(positionals: [("a memory region", .name(.mr))], required: 1),
            "rdma_write": CommandSpec(positionals: [("an ODP NIC", .name(.nic)), ("a local memory region", .name(.mr)), ("a local address", .expr),
                                                    ("a remote memory region", .name(.mr)), ("a remote address", .expr), ("a length", .expr)],
                                      required: 6, expect: .outcome),
            "rdma_read": CommandSpec(positionals: [("an ODP NIC", .name(.nic)), ("a local memory region", .name(.mr)), ("a local address", .expr),
                                                   ("a remote memory region", .name(.mr)), ("a remote address", .expr), ("a length", .expr)],
                                     required: 6, expect: .outcome),
            "rdma_fadd": CommandSpec(positionals: [("an ODP NIC", .name(.nic)), ("a memory region", .name(.mr)), ("an address", .expr),
                                                   ("a delta", .expr)], required: 4, expect: .keyed("old")),
            "rdma_cswap": CommandSpec(positionals: [("an ODP NIC", .name(.nic)), ("a memory region", .name(.mr)), ("an address", .expr),
                                                    ("the expected value", .expr), ("the new value", .expr)], required: 5, expect: .keyed("old")),
            "odp_stats": CommandSpec(positionals: [("an ODP NIC", .name(.nic))], required: 1,
                                     expect: .counters(Set(ODPStats.Counter.allCases.map(\.description)).union(["mapped"]))),
            "device_shootdown": CommandSpec(positionals: [("a device", .name(.device))], required: 1, keys: ["latency": .expr],
                                            flags: ["two_phase", "fails"], expect: .counters(["finish_passes", "cut_off"])),
            "svm_shootdown": CommandSpec(positionals: [("an SVM device", .name(.svm))], required: 1, keys: ["latency": .expr],
                                         flags: ["two_phase", "fails"], expect: .counters(["finish_passes", "cut_off"])),
            "device_pages": CommandSpec(positionals: [("a device", .name(.device))], required: 1, expect: .counters(["count", "owned", "mirrored"])),
            "meminfo": CommandSpec(positionals: [], required: 0, expect: .counters(Set(ScenarioInterpreter.meminfoKeys))),
            // The machine's event counters, named as in /proc/vmstat (pswpin, pswpout, ...).
            "vmstat": CommandSpec(positionals: [], required: 0, expect: .counters(Set(MMStats.Counter.allCases.map(\.name)))),
            // nr_hugepages of a hugetlb pool (the default 2 MiB one, or size=1GiB).
            "hugepages": CommandSpec(positionals: [("a page count", .expr)], required: 1, keys: ["size": .expr],
                                     expect: .counters(["total", "free", "rsvd", "surp"])),
            // transparent_hugepage/enabled (always, madvise, never) and use_zero_page.
            "thp": CommandSpec(positionals: [], required: 0, flags: ["always", "madvise", "never", "zero_page", "no_zero_page"]),
            "kswapd": CommandSpec(positionals: [], required: 0, flags: ["start", "stop"]),
        ]
        // Commands with a bounce buffer may keep it (`-> B`); the others have none to keep.
        for c in ["read", "write", "migrate_to_dev", "snapshot", "exclusive"] { t[c] = deviceCommandSpec }
        var noBuffer = deviceCommandSpec
        noBuffer.bind = .none
        noBuffer.keys = ["proc": .name(.process)]
        for c in ["migrate_to_sys", "check_exclusive"] { t[c] = noBuffer }
        return t
    }()
}
