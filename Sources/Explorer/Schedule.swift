/// A schedule: which model thread ran at each step of an execution. Thread ids are given in
/// creation order (0 is the execution's own body), so a schedule means the same thing in every
/// run of the same program.
///
/// Printed as runs of `THREADxCOUNT` joined by `.` (`0x12.1x3.0x5`): short for the usual
/// schedules, where a thread runs several steps between switches. `Schedule(parsing:)` reads it back.
public struct Schedule: Equatable, Sendable, CustomStringConvertible {
    public private(set) var choices: [UInt8]

    public init(_ choices: [UInt8] = []) { self.choices = choices }

    mutating func append(_ thread: Int) { choices.append(UInt8(truncatingIfNeeded: thread)) }

    public var count: Int { choices.count }

    public var description: String {
        var parts: [String] = []
        var i = 0
        while i < choices.count {
            var j = i
            while j < choices.count && choices[j] == choices[i] { j += 1 }
            parts.append(j - i == 1 ? "\(choices[i])" : "\(choices[i])x\(j - i)")
            i = j
        }
        return parts.joined(separator: ".")
    }

    /// Reads the printed form. Returns nil for malformed text (the message says where).
    public init?(parsing text: String) {
        var out: [UInt8] = []
        let trimmed = text.trimmingWhitespace()
        if trimmed.isEmpty { self.init(out); return }
        for part in trimmed.split(separator: ".", omittingEmptySubsequences: false) {
            let pieces = part.split(separator: "x", omittingEmptySubsequences: false)
            guard pieces.count == 1 || pieces.count == 2, let t = UInt8(pieces[0]) else { return nil }
            let n = pieces.count == 2 ? Int(pieces[1]) : 1
            guard let n, n >= 1, n <= 100_000_000, out.count + n <= 100_000_000 else { return nil }
            out.append(contentsOf: repeatElement(t, count: n))
        }
        self.init(out)
    }
}

extension String {
    func trimmingWhitespace() -> String {
        var s = Substring(self)
        while let c = s.first, c.isWhitespace { s.removeFirst() }
        while let c = s.last, c.isWhitespace { s.removeLast() }
        return String(s)
    }
}

/// FNV-1a over the steps of an execution (thread and kind of each step): two executions with
/// the same hash took the same steps in the same order.
struct TraceHash {
    private(set) var value: UInt64 = 0xcbf2_9ce4_8422_2325
    mutating func add(_ byte: UInt8) { value = (value ^ UInt64(byte)) &* 0x0000_0100_0000_01B3 }
    mutating func add(thread: Int, kind: UInt8) { add(UInt8(truncatingIfNeeded: thread)); add(kind) }
}
