import MMSync

/// The reverse map of anonymous memory (`struct anon_vma`). Each anonymous page points at the
/// anon_vma of the VMA that created it; every VMA that may map such a page (the creator, VMAs
/// split from it, and every forked copy) is linked into that anon_vma, so an rmap walk finds
/// all of them. All anon_vmas of one fork tree share the root's lock.
public final class AnonVMA: @unchecked Sendable {
    /// Locking: `lock` (write to link/unlink, read to walk).
    @exclusivity(unchecked) var vmas: [VMA] = []
    let parent: AnonVMA?
    private let rootRef: AnonVMA?

    var root: AnonVMA { rootRef ?? self }
    /// The lock of the whole tree (`anon_vma->root->rwsem`): the root's, stored in every
    /// anon_vma of the tree so that an rmap walk reaches it without going through the root.
    public let lock: RWSem

    init(parent: AnonVMA?) {
        self.parent = parent
        if let p = parent { rootRef = p.root; lock = p.lock } else { rootRef = nil; lock = RWSem("anon_vma") }
    }

    func link(_ vma: VMA) {
        lock.assertWriteLocked()
        vmas.append(vma)
        vma.anonVMAChain.append(self)
    }
}

extension AddressSpace {
    /// `anon_vma_prepare`: makes sure `vma` has an anon_vma before its first anonymous page.
    /// Locking: mmap lock held (read suffices); serialised by `pageTableLock`.
    /// As the kernel's, it first reuses the anon_vma of an adjacent VMA that differs only in
    /// protection (`find_mergeable_anon_vma`), so that an mprotect can later merge the two.
    package func anonVMAPrepare(_ vma: VMA) -> AnonVMA {
        mmapLock.assertLocked()
        if let av = vma.anonVMA { return av }
        pageTableLock.lock(); defer { pageTableLock.unlock() }
        if let av = vma.anonVMA { return av }
        let av = findMergeableAnonVMA(vma) ?? AnonVMA(parent: nil)
        av.lock.lockWrite()
        av.link(vma)
        vma.anonVMA = av
        av.lock.unlockWrite()
        return av
    }

    /// `vmf_anon_prepare`: the VMA's anon_vma for a fault about to create an anonymous page,
    /// without a reference (the VMA's chain holds one). Making one looks at the neighbours,
    /// which needs the mmap lock: under the VMA lock (`.vmaLock`) it is tried for read, and if
    /// that fails the result is nil and the fault is redone under the mmap lock
    /// (`VM_FAULT_RETRY`).
    /// Locking: the fault's lock (mmap lock, or the VMA's lock with `.vmaLock`).
    @inline(__always) func vmfAnonPrepare(_ vma: VMA, _ flags: FaultFlags) -> Unmanaged<AnonVMA>? {
        assertFaultLocked(vma, flags)
        if let av = vma.anonVMARef { return av }
        guard flags.contains(.vmaLock) else { return .passUnretained(anonVMAPrepare(vma)) }
        guard mmapLock.tryLockRead() else { return nil }
        defer { mmapLock.unlockRead() }
        return .passUnretained(anonVMAPrepare(vma))
    }

    /// `anon_vma_compatible`: `a` right before `b`, the same backing and flags but for the
    /// access bits, contiguous page offsets.
    private func anonVMACompatible(_ a: VMA, _ b: VMA) -> Bool {
        a.end == b.start && a.file === b.file && a.flags.subtracting(.accessMask) == b.flags.subtracting(.accessMask)
            && b.pgoff == a.pgoff &+ ((b.start - a.start) >> pageShift)
    }

    /// `find_mergeable_anon_vma`: the next VMA's anon_vma, else the previous one's, if that VMA
    /// is compatible and linked to its own anon_vma only. Locking: mmap lock held.
    private func findMergeableAnonVMA(_ vma: VMA) -> AnonVMA? {
        mmapLock.assertLocked()
        let i = vmaIndex(atOrAfter: vma.start)
        guard i < vmaList.count, vmaList[i] === vma else { return nil }
        if i + 1 < vmaList.count, anonVMACompatible(vma, vmaList[i + 1]),
           let av = vmaList[i + 1].anonVMA, vmaList[i + 1].anonVMAChain.count == 1 { return av }
        if i > 0, anonVMACompatible(vmaList[i - 1], vma),
           let av = vmaList[i - 1].anonVMA, vmaList[i - 1].anonVMAChain.count == 1 { return av }
        return nil
    }

    /// `anon_vma_clone`: `dst` (split from or copied from `src`) joins every anon_vma of `src`.
    func anonVMAClone(dst: VMA, src: VMA) {
        for av in src.anonVMAChain {
            av.lock.lockWrite(); av.link(dst); av.lock.unlockWrite()
        }
        dst.anonVMA = src.anonVMA
    }

    /// `anon_vma_fork`: the child VMA joins the parent's anon_vmas and gets its own, a child of
    /// the parent's, for the pages it will create by COW.
    func anonVMAFork(child: VMA, parent: VMA) {
        guard let pav = parent.anonVMA else { return }
        anonVMAClone(dst: child, src: parent)
        let av = AnonVMA(parent: pav)
        av.lock.lockWrite(); av.link(child); av.lock.unlockWrite()
        child.anonVMA = av
    }

    /// `unlink_anon_vmas`: removes `vma` from every anon_vma it is linked into.
    func unlinkAnonVMAs(_ vma: VMA) {
        for av in vma.anonVMAChain {
            av.lock.lockWrite()
            av.vmas.removeAll { $0 === vma }
            av.lock.unlockWrite()
        }
        vma.anonVMAChain.removeAll()
    }
}
