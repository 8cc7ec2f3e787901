// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {SignatureChecker} from "@openzeppelin/contracts/utils/cryptography/SignatureChecker.sol";
import {Multicall} from "@openzeppelin/contracts/utils/Multicall.sol";
import {SafeCast} from "@openzeppelin/contracts/utils/math/SafeCast.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";

import {IBatchSettlement} from "./interfaces/IBatchSettlement.sol";
import {IDepositCollector} from "./interfaces/IDepositCollector.sol";

/// @title BatchSettlement
/// @notice Tollway's escrow for x402 `batch-settlement` payment channels.
/// @dev Requires EIP-1153 (transient storage) for the reentrancy guard: deploy on Cancun or later.
///      Holds no constructor-written storage (the EIP-712 domain lives in immutables), so its runtime code
///      can be placed at a fixed address on a local chain.
contract BatchSettlement is IBatchSettlement, EIP712, Multicall, ReentrancyGuardTransient {
    using SafeERC20 for IERC20;

    uint40 public constant MIN_WITHDRAW_DELAY = 15 minutes;
    uint40 public constant MAX_WITHDRAW_DELAY = 30 days;

    bytes32 public constant CHANNEL_CONFIG_TYPEHASH = keccak256(
        "ChannelConfig(address payer,address payerAuthorizer,address receiver,address receiverAuthorizer,address token,uint40 withdrawDelay,bytes32 salt)"
    );
    bytes32 public constant VOUCHER_TYPEHASH = keccak256("Voucher(bytes32 channelId,uint128 maxClaimableAmount)");
    bytes32 public constant REFUND_TYPEHASH = keccak256("Refund(bytes32 channelId,uint256 nonce,uint128 amount)");
    bytes32 public constant CLAIM_ENTRY_TYPEHASH =
        keccak256("ClaimEntry(bytes32 channelId,uint128 maxClaimableAmount,uint128 totalClaimed)");
    bytes32 public constant CLAIM_BATCH_TYPEHASH = keccak256(
        "ClaimBatch(ClaimEntry[] claims)ClaimEntry(bytes32 channelId,uint128 maxClaimableAmount,uint128 totalClaimed)"
    );

    /// @inheritdoc IBatchSettlement
    mapping(bytes32 channelId => ChannelState) public channels;
    /// @inheritdoc IBatchSettlement
    mapping(bytes32 channelId => uint256) public refundNonce;
    /// @inheritdoc IBatchSettlement
    mapping(bytes32 channelId => WithdrawalState) public pendingWithdrawals;
    /// @inheritdoc IBatchSettlement
    mapping(address receiver => mapping(address token => ReceiverState)) public receivers;

    /// @dev Claimed amounts of consecutive rows with the same (receiver, token) are summed in memory and
    ///      written to `receivers` once per run, instead of once per row.
    struct PendingCredit {
        address receiver;
        address token;
        // uint256: rows of several channels can sum past uint128 for a token whose supply exceeds it.
        uint256 amount;
    }

    constructor() EIP712("x402 Batch Settlement", "1") {}

    // ---------------------------------------------------------------------------------------------
    // Deposits
    // ---------------------------------------------------------------------------------------------

    /// @inheritdoc IBatchSettlement
    function deposit(ChannelConfig calldata config, uint128 amount, address collector, bytes calldata collectorData)
        external
        nonReentrant
    {
        // The id first: it rejects dirty calldata with BatchSettlementMalformedConfig before any field is read.
        bytes32 channelId = _channelId(config);
        _requireValidConfig(config);
        if (amount == 0) revert BatchSettlementZeroDeposit(channelId);
        if (collector == address(0)) revert BatchSettlementInvalidCollector(collector);

        ChannelState storage ch = channels[channelId];
        uint128 oldBalance = ch.balance;
        if (amount > type(uint128).max - oldBalance) {
            revert BatchSettlementDepositOverflow(channelId, oldBalance, amount);
        }
        // Cannot overflow: checked just above.
        uint128 newBalance;
        unchecked {
            newBalance = oldBalance + amount;
        }
        // Effects first; the post-condition below reverts all of it if the tokens did not arrive.
        ch.balance = newBalance;

        IERC20 token = IERC20(config.token);
        uint256 before = token.balanceOf(address(this));
        IDepositCollector(collector).collect(config.payer, config.token, amount, channelId, collectorData);
        uint256 afterwards = token.balanceOf(address(this));
        if (afterwards != before + amount) {
            revert BatchSettlementDepositNotReceived(
                address(token), amount, afterwards > before ? afterwards - before : 0
            );
        }

        // balance >= totalClaimed always holds, so an empty balance means an empty channel.
        if (oldBalance == 0) emit ChannelCreated(channelId, config);
        emit Deposited(channelId, msg.sender, amount, newBalance);
    }

    // ---------------------------------------------------------------------------------------------
    // Claims and settlement
    // ---------------------------------------------------------------------------------------------

    /// @inheritdoc IBatchSettlement
    function claim(VoucherClaim[] calldata voucherClaims) external nonReentrant {
        uint256 n = voucherClaims.length;
        if (n == 0) revert BatchSettlementEmptyBatch();

        PendingCredit memory credit;
        for (uint256 i = 0; i < n; ++i) {
            VoucherClaim calldata row = voucherClaims[i];
            ChannelConfig calldata c = row.voucher.channel;
            bytes32 channelId = _channelId(c);
            if (msg.sender != c.receiver && msg.sender != c.receiverAuthorizer) {
                revert BatchSettlementNotReceiverSide(channelId, msg.sender);
            }
            _applyClaim(row, channelId, credit);
        }
        _flushCredit(credit);
    }

    /// @inheritdoc IBatchSettlement
    function claimWithSignature(VoucherClaim[] calldata voucherClaims, bytes calldata authorizerSignature)
        external
        nonReentrant
    {
        uint256 n = voucherClaims.length;
        if (n == 0) revert BatchSettlementEmptyBatch();

        (bytes32 digest, bytes32[] memory ids) = _claimBatchDigest(voucherClaims);
        address authorizer = voucherClaims[0].voucher.channel.receiverAuthorizer;
        if (!SignatureChecker.isValidSignatureNowCalldata(authorizer, digest, authorizerSignature)) {
            revert BatchSettlementInvalidAuthorizerSignature(authorizer, digest);
        }

        PendingCredit memory credit;
        for (uint256 i = 0; i < n; ++i) {
            VoucherClaim calldata row = voucherClaims[i];
            address rowAuthorizer = row.voucher.channel.receiverAuthorizer;
            if (rowAuthorizer != authorizer) revert BatchSettlementMixedAuthorizer(i, authorizer, rowAuthorizer);
            _applyClaim(row, ids[i], credit);
        }
        _flushCredit(credit);
    }

    /// @inheritdoc IBatchSettlement
    function settle(address receiver, address token) external nonReentrant {
        ReceiverState storage rs = receivers[receiver][token];
        uint128 amount;
        // One read and one full-slot write of the packed (totalClaimed, totalSettled) word.
        // Cannot underflow: totalSettled is only ever set to totalClaimed, which never decreases.
        assembly ("memory-safe") {
            let slot := rs.slot
            let word := sload(slot)
            let claimed := and(word, 0xffffffffffffffffffffffffffffffff)
            amount := sub(claimed, shr(128, word))
            if amount { sstore(slot, or(claimed, shl(128, claimed))) }
        }
        if (amount == 0) return;

        emit Settled(receiver, token, msg.sender, amount);
        _payout(token, receiver, amount);
    }

    // ---------------------------------------------------------------------------------------------
    // Closing
    // ---------------------------------------------------------------------------------------------

    /// @inheritdoc IBatchSettlement
    function initiateWithdraw(ChannelConfig calldata config, uint128 amount) external nonReentrant {
        bytes32 channelId = _channelId(config);
        _requirePayerSide(config, channelId);
        if (amount == 0) revert BatchSettlementNothingToWithdraw(channelId);

        WithdrawalState storage ws = pendingWithdrawals[channelId];
        uint40 initiatedAt = ws.initiatedAt;
        if (initiatedAt != 0) revert BatchSettlementWithdrawalPending(channelId, initiatedAt);

        uint128 available = _unclaimed(channels[channelId]);
        if (amount > available) revert BatchSettlementWithdrawExceedsAvailable(channelId, amount, available);

        uint40 nowTs = uint40(block.timestamp);
        ws.amount = amount;
        ws.initiatedAt = nowTs;
        emit WithdrawInitiated(channelId, amount, nowTs + config.withdrawDelay);
    }

    /// @inheritdoc IBatchSettlement
    function finalizeWithdraw(ChannelConfig calldata config) external nonReentrant {
        bytes32 channelId = _channelId(config);
        _requirePayerSide(config, channelId);

        WithdrawalState storage ws = pendingWithdrawals[channelId];
        uint40 initiatedAt = ws.initiatedAt;
        if (initiatedAt == 0) revert BatchSettlementWithdrawalNotPending(channelId);
        uint256 finalizeAfter = uint256(initiatedAt) + config.withdrawDelay;
        if (block.timestamp < finalizeAfter) {
            revert BatchSettlementWithdrawDelayNotElapsed(channelId, finalizeAfter, block.timestamp);
        }

        ChannelState storage ch = channels[channelId];
        uint128 available = _unclaimed(ch);
        uint128 requested = ws.amount;
        uint128 amount = requested > available ? available : requested;

        delete pendingWithdrawals[channelId];
        uint128 newBalance = ch.balance - amount;
        ch.balance = newBalance;
        emit WithdrawFinalized(channelId, msg.sender, amount);
        if (newBalance == 0) emit ChannelClosed(channelId, config);

        if (amount != 0) _payout(config.token, config.payer, amount);
    }

    /// @inheritdoc IBatchSettlement
    function refund(ChannelConfig calldata config, uint128 amount) external nonReentrant {
        bytes32 channelId = _channelId(config);
        if (msg.sender != config.receiver && msg.sender != config.receiverAuthorizer) {
            revert BatchSettlementNotReceiverSide(channelId, msg.sender);
        }
        _refund(config, channelId, amount);
    }

    /// @inheritdoc IBatchSettlement
    function refundWithSignature(
        ChannelConfig calldata config,
        uint128 amount,
        uint256 nonce,
        bytes calldata receiverAuthorizerSignature
    ) external nonReentrant {
        bytes32 channelId = _channelId(config);
        uint256 expected = refundNonce[channelId];
        if (nonce != expected) revert BatchSettlementInvalidRefundNonce(channelId, expected, nonce);

        bytes32 digest = _hashTypedDataV4(_hash4(REFUND_TYPEHASH, channelId, bytes32(nonce), bytes32(uint256(amount))));
        address authorizer = config.receiverAuthorizer;
        if (!SignatureChecker.isValidSignatureNowCalldata(authorizer, digest, receiverAuthorizerSignature)) {
            revert BatchSettlementInvalidAuthorizerSignature(authorizer, digest);
        }
        _refund(config, channelId, amount);
    }

    // ---------------------------------------------------------------------------------------------
    // Views
    // ---------------------------------------------------------------------------------------------

    /// @inheritdoc IBatchSettlement
    function getChannelId(ChannelConfig calldata config) external view returns (bytes32) {
        return _channelId(config);
    }

    /// @inheritdoc IBatchSettlement
    function getVoucherDigest(bytes32 channelId, uint128 maxClaimableAmount) external view returns (bytes32) {
        return _voucherDigest(channelId, maxClaimableAmount);
    }

    /// @inheritdoc IBatchSettlement
    function getRefundDigest(bytes32 channelId, uint256 nonce, uint128 amount) external view returns (bytes32) {
        return _hashTypedDataV4(_hash4(REFUND_TYPEHASH, channelId, bytes32(nonce), bytes32(uint256(amount))));
    }

    /// @inheritdoc IBatchSettlement
    function getClaimBatchDigest(VoucherClaim[] calldata voucherClaims) external view returns (bytes32 digest) {
        (digest,) = _claimBatchDigest(voucherClaims);
    }

    // ---------------------------------------------------------------------------------------------
    // Internals
    // ---------------------------------------------------------------------------------------------

    /// @dev Raises one channel's totalClaimed to the row's total after checking ceiling, balance and the
    ///      payer-side signature. Rows at or below the current total are no-ops, which makes replays harmless.
    function _applyClaim(VoucherClaim calldata row, bytes32 channelId, PendingCredit memory credit) private {
        ChannelState storage ch = channels[channelId];
        uint128 target = row.totalClaimed;
        uint128 claimed = ch.totalClaimed;
        if (target <= claimed) return;

        uint128 ceiling = row.voucher.maxClaimableAmount;
        if (target > ceiling) revert BatchSettlementClaimExceedsCeiling(channelId, target, ceiling);
        uint128 balance = ch.balance;
        if (target > balance) revert BatchSettlementClaimExceedsBalance(channelId, target, balance);

        ChannelConfig calldata c = row.voucher.channel;
        _requireVoucherSignature(c, channelId, ceiling, row.signature);

        // One full-slot write (balance unchanged).
        channels[channelId] = ChannelState({balance: balance, totalClaimed: target});
        // Cannot underflow: target > claimed was checked above.
        uint128 delta;
        unchecked {
            delta = target - claimed;
        }

        address receiver = c.receiver;
        address token = c.token;
        if (receiver != credit.receiver || token != credit.token) {
            _flushCredit(credit);
            credit.receiver = receiver;
            credit.token = token;
        }
        // Cannot overflow: a batch has far fewer than 2^128 rows of at most 2^128 - 1 each.
        unchecked {
            credit.amount += delta;
        }
        emit Claimed(channelId, msg.sender, delta, target);
    }

    /// @dev Writes the summed claims of a run of rows to the receiver's totals.
    function _flushCredit(PendingCredit memory credit) private {
        if (credit.amount == 0) return;
        // A sum past uint128 reverts (SafeCastOverflowedUintDowncast) rather than credit the receiver less.
        receivers[credit.receiver][credit.token].totalClaimed += SafeCast.toUint128(credit.amount);
        credit.amount = 0;
    }

    /// @dev A non-zero payerAuthorizer is an EOA checked by ECDSA alone (65 bytes, low s); a zero one means the
    ///      payer signs, as an EOA or an ERC-1271 contract.
    function _requireVoucherSignature(
        ChannelConfig calldata c,
        bytes32 channelId,
        uint128 ceiling,
        bytes calldata signature
    ) private view {
        bytes32 digest = _voucherDigest(channelId, ceiling);
        address authorizer = c.payerAuthorizer;
        if (authorizer != address(0)) {
            (address recovered, ECDSA.RecoverError err,) = ECDSA.tryRecoverCalldata(digest, signature);
            if (err != ECDSA.RecoverError.NoError || recovered != authorizer) {
                revert BatchSettlementInvalidVoucherSignature(channelId, authorizer);
            }
        } else {
            address payer = c.payer;
            if (!SignatureChecker.isValidSignatureNowCalldata(payer, digest, signature)) {
                revert BatchSettlementInvalidVoucherSignature(channelId, payer);
            }
        }
    }

    /// @dev Shared by `refund` and `refundWithSignature`. The nonce advances before anything else, even when
    ///      nothing is left to refund, so a direct refund invalidates signatures made for the old nonce.
    function _refund(ChannelConfig calldata config, bytes32 channelId, uint128 amount) private {
        if (amount == 0) revert BatchSettlementZeroRefund(channelId);
        // Cannot overflow: one increment per transaction.
        unchecked {
            ++refundNonce[channelId];
        }

        ChannelState memory ch = channels[channelId];
        // Cannot underflow: balance >= totalClaimed is kept by every path.
        uint128 refunded;
        uint128 newBalance;
        unchecked {
            uint128 available = ch.balance - ch.totalClaimed;
            refunded = amount > available ? available : amount;
            if (refunded == 0) return;
            newBalance = ch.balance - refunded;
        }
        // One full-slot write.
        channels[channelId] = ChannelState({balance: newBalance, totalClaimed: ch.totalClaimed});

        WithdrawalState storage ws = pendingWithdrawals[channelId];
        if (ws.initiatedAt != 0) {
            uint128 pending = ws.amount;
            if (refunded >= pending) {
                delete pendingWithdrawals[channelId];
            } else {
                // Cannot underflow: refunded < pending.
                unchecked {
                    ws.amount = pending - refunded;
                }
            }
        }

        emit Refunded(channelId, msg.sender, refunded);
        if (newBalance == 0) emit ChannelClosed(channelId, config);
        _payout(config.token, config.payer, refunded);
    }

    /// @dev Unclaimed escrow of a channel. Cannot underflow: balance >= totalClaimed is kept by every path
    ///      (claims are capped at balance; refunds and withdrawals at balance - totalClaimed).
    function _unclaimed(ChannelState storage ch) private view returns (uint128 available) {
        unchecked {
            available = ch.balance - ch.totalClaimed;
        }
    }

    /// @dev The one path by which tokens leave the escrow. Callers update state before calling it.
    function _payout(address token, address to, uint256 amount) private {
        IERC20(token).safeTransfer(to, amount);
    }

    function _requireValidConfig(ChannelConfig calldata config) private pure {
        if (
            config.payer == address(0) || config.receiver == address(0) || config.receiverAuthorizer == address(0)
                || config.token == address(0)
        ) {
            revert BatchSettlementInvalidConfig(config.payer, config.receiver, config.receiverAuthorizer, config.token);
        }
        uint40 delay = config.withdrawDelay;
        if (delay < MIN_WITHDRAW_DELAY || delay > MAX_WITHDRAW_DELAY) {
            revert BatchSettlementWithdrawDelayOutOfRange(delay, MIN_WITHDRAW_DELAY, MAX_WITHDRAW_DELAY);
        }
    }

    function _requirePayerSide(ChannelConfig calldata config, bytes32 channelId) private view {
        if (msg.sender != config.payer && msg.sender != config.payerAuthorizer) {
            revert BatchSettlementNotPayerSide(channelId, msg.sender);
        }
    }

    /// @dev EIP-712 hash of a ChannelConfig read straight from calldata (no ABI copy to memory). Rejects words
    ///      with bits outside their type, so every config has exactly one id.
    function _channelId(ChannelConfig calldata config) private view returns (bytes32) {
        bytes32 typeHash = CHANNEL_CONFIG_TYPEHASH;
        bytes32 structHash;
        uint256 dirty;
        assembly ("memory-safe") {
            let ptr := mload(0x40)
            mstore(ptr, typeHash)
            calldatacopy(add(ptr, 0x20), config, 0xe0)
            dirty :=
                or(
                    or(
                        or(shr(160, mload(add(ptr, 0x20))), shr(160, mload(add(ptr, 0x40)))),
                        or(shr(160, mload(add(ptr, 0x60))), shr(160, mload(add(ptr, 0x80))))
                    ),
                    or(shr(160, mload(add(ptr, 0xa0))), shr(40, mload(add(ptr, 0xc0))))
                )
            structHash := keccak256(ptr, 0x100)
        }
        if (dirty != 0) revert BatchSettlementMalformedConfig();
        return _hashTypedDataV4(structHash);
    }

    function _voucherDigest(bytes32 channelId, uint128 maxClaimableAmount) private view returns (bytes32) {
        return _hashTypedDataV4(_hash3(VOUCHER_TYPEHASH, channelId, bytes32(uint256(maxClaimableAmount))));
    }

    /// @dev Digest of a ClaimBatch and the channel ids of its rows (computed once, reused by the claim loop).
    function _claimBatchDigest(VoucherClaim[] calldata voucherClaims)
        private
        view
        returns (bytes32 digest, bytes32[] memory ids)
    {
        uint256 n = voucherClaims.length;
        ids = new bytes32[](n);
        bytes32[] memory entries = new bytes32[](n);
        for (uint256 i = 0; i < n; ++i) {
            VoucherClaim calldata row = voucherClaims[i];
            bytes32 channelId = _channelId(row.voucher.channel);
            ids[i] = channelId;
            entries[i] = _hash4(
                CLAIM_ENTRY_TYPEHASH,
                channelId,
                bytes32(uint256(row.voucher.maxClaimableAmount)),
                bytes32(uint256(row.totalClaimed))
            );
        }
        bytes32 entriesRoot;
        assembly ("memory-safe") {
            entriesRoot := keccak256(add(entries, 0x20), shl(5, n))
        }
        digest = _hashTypedDataV4(keccak256(abi.encode(CLAIM_BATCH_TYPEHASH, entriesRoot)));
    }

    /// @dev keccak256(abi.encode(a, b, c)) in scratch memory past the free pointer, without allocating.
    function _hash3(bytes32 a, bytes32 b, bytes32 c) private pure returns (bytes32 h) {
        assembly ("memory-safe") {
            let ptr := mload(0x40)
            mstore(ptr, a)
            mstore(add(ptr, 0x20), b)
            mstore(add(ptr, 0x40), c)
            h := keccak256(ptr, 0x60)
        }
    }

    /// @dev keccak256(abi.encode(a, b, c, d)) in scratch memory past the free pointer, without allocating.
    function _hash4(bytes32 a, bytes32 b, bytes32 c, bytes32 d) private pure returns (bytes32 h) {
        assembly ("memory-safe") {
            let ptr := mload(0x40)
            mstore(ptr, a)
            mstore(add(ptr, 0x20), b)
            mstore(add(ptr, 0x40), c)
            mstore(add(ptr, 0x60), d)
            h := keccak256(ptr, 0x80)
        }
    }
}
