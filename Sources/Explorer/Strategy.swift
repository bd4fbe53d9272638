import MMSync

/// How the explorer picks the next thread at each step.
public enum Strategy: Equatable, Sendable, CustomStringConvertible {
    /// A seeded random walk: every enabled thread equally likely at every step.
    case random
    /// Probabilistic concurrency testing (Burckhardt et al., ASPLOS 2010) with bug depth `d`:
    /// threads get random distinct priorities, the highest-priority enabled thread runs, and at
    /// `d - 1` random steps the running thread drops below all others. A bug of depth `d` is
    /// found with probability at least 1 / (n · k^(d-1)) per execution (n threads, k steps).
    case pct(depth: Int)
    /// Replays a recorded schedule step for step.
    case replay(Schedule)
    /// Every step hands over to the next enabled thread (quantum one step): the most
    /// switches, for measuring the scheduler's hand-off.
    case roundRobin
    /// Bounded depth-first search (`DepthFirstSearch`): every schedule with at most
    /// `preemptions` preemptions, until the space is exhausted. With `reduction` (sleep sets)
    /// schedules that only reorder commuting steps are skipped, which under a preemption bound
    /// may skip a whole class of schedules within it: a reduced search that ends is not
    /// exhaustive. A campaign's seed range bounds its executions; the seed names an execution
    /// by its index.
    case dfs(preemptions: Int, reduction: Bool)

    public var description: String {
        switch self {
        case .random: return "random"
        case .pct(let d): return "pct:\(d)"
        case .replay: return "replay"
        case .roundRobin: return "round-robin"
        case .dfs(let p, let r): return "dfs:\(p)" + (r ? ":sleep" : "")
        }
    }

    /// Parses `random`, `pct:D` (D ≥ 1; `pct` alone is depth 3), `dfs:P` (P preemptions, 0…16;
    /// `dfs` alone is 2) and `dfs:P:sleep` (with the sleep-set reduction).
    public init?(parsing text: String) {
        if text == "random" { self = .random; return }
        if text == "dfs" { self = .dfs(preemptions: 2, reduction: false); return }
        if text.hasPrefix("dfs:") {
            let parts = text.dropFirst(4).split(separator: ":", omittingEmptySubsequences: false)
            guard let p = Int(parts[0]), p >= 0, p <= 16, parts.count == 1 || (parts.count == 2 && parts[1] == "sleep") else { return nil }
            self = .dfs(preemptions: p, reduction: parts.count == 2)
            return
        }
        if text == "pct" { self = .pct(depth: 3); return }
        if text.hasPrefix("pct:"), let d = Int(text.dropFirst(4)), d >= 1, d <= 64 { self = .pct(depth: d); return }
        return nil
    }
}

/// One execution's decision maker, made from a `Strategy` and a seed.
protocol Picker {
    /// A thread was created (ids are consecutive from 0).
    mutating func threadCreated(_ id: Int)
    /// The thread to run at `step`, among `enabled` (ascending ids, never empty); nil when the
    /// picker cannot follow its plan (a replay whose recorded thread is not enabled).
    mutating func pick(step: Int, current: Int, enabled: [Int]) -> Int?
    /// `thread` went round a retry loop: it waits for others to act. A fair strategy lets
    /// them (the explorer reports livelocks under fair schedules only).
    mutating func yielded(_ thread: Int)
    /// `thread` reached a point of `kind` on `object`, `blocked` there or not (each step ends
    /// at one).
    mutating func observed(thread: Int, kind: SyncPointKind, object: UnsafeRawPointer?, blocked: Bool)
}

extension Picker {
    mutating func yielded(_ thread: Int) {}
    mutating func observed(thread: Int, kind: SyncPointKind, object: UnsafeRawPointer?, blocked: Bool) {}
}

struct RandomPicker: Picker {
    var rng: SeededRNG
    init(seed: UInt64) { rng = SeededRNG(seed: seed) }
    mutating func threadCreated(_ id: Int) {}
    mutating func pick(step: Int, current: Int, enabled: [Int]) -> Int? {
        enabled[Int(rng.next() % UInt64(enabled.count))]
    }
}

struct PCTPicker: Picker {
    var rng: SeededRNG
    /// Priority per thread id; higher runs first. Initial priorities are ≥ depth; the i-th
    /// change point lowers the running thread to depth - 1 - i (below every initial one).
    var priority: [Int] = []
    var changePoints: [Int: Int] = [:]
    let depth: Int

    /// `steps`: the expected length of an execution (the longest seen so far).
    init(seed: UInt64, depth: Int, steps: Int) {
        rng = SeededRNG(seed: seed)
        self.depth = depth
        let k = max(steps, 1)
        for i in 0..<(depth - 1) { changePoints[Int(rng.next() % UInt64(k)) + 1] = depth - 2 - i }
    }
    mutating func threadCreated(_ id: Int) {
        // A random distinct priority above the change-point range: insert at a random rank.
        let rank = Int(rng.next() % UInt64(priority.count + 1))
        for i in priority.indices where priority[i] >= depth + rank { priority[i] += 1 }
        priority.append(depth + rank)
    }
    /// A thread retrying drops below every other (as CHESS treats a yield): strict priorities
    /// would otherwise starve the thread it waits for, a livelock no fair scheduler makes.
    mutating func yielded(_ thread: Int) {
        guard thread < priority.count else { return }
        let lowest = priority.min() ?? 0
        priority[thread] = lowest - 1
    }
    mutating func pick(step: Int, current: Int, enabled: [Int]) -> Int? {
        if let low = changePoints[step], current < priority.count { priority[current] = low }
        var best = enabled[0]
        for t in enabled where priority[t] > priority[best] { best = t }
        return best
    }
}

struct ReplayPicker: Picker {
    let schedule: Schedule
    mutating func threadCreated(_ id: Int) {}
    mutating func pick(step: Int, current: Int, enabled: [Int]) -> Int? {
        guard step - 1 < schedule.count else { return nil }
        let t = Int(schedule.choices[step - 1])
        return enabled.contains(t) ? t : nil
    }
}

struct RoundRobinPicker: Picker {
    mutating func threadCreated(_ id: Int) {}
    mutating func pick(step: Int, current: Int, enabled: [Int]) -> Int? {
        enabled.first { $0 > current } ?? enabled[0]
    }
}
