// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

/// @title IBatchSettlement
/// @notice Escrow for unidirectional ERC-20 payment channels, the on-chain half of the x402 v2
///         `batch-settlement` scheme on EVM. Same ABI, EIP-712 domain ("x402 Batch Settlement", "1")
///         and type hashes as the scheme's reference contract, so stock x402 clients interoperate.
/// @dev Accounting model: a channel's `balance` is everything deposited minus refunds and finalized
///      withdrawals; `totalClaimed` is the cumulative amount the receiver side has claimed out of it
///      (claimed funds stay inside `balance`). `balance - totalClaimed` is the payer's unclaimed escrow.
///      Claimed funds are pooled per (receiver, token) and leave the contract through `settle`.
///      Invariant: token.balanceOf(escrow) == sum(channel.balance) - sum(receiver.totalSettled).
interface IBatchSettlement {
    // ---------------------------------------------------------------------------------------------
    // Types
    // ---------------------------------------------------------------------------------------------

    /// @notice Immutable channel parameters; their EIP-712 hash is the channel id.
    struct ChannelConfig {
        address payer; // funds the channel, receives refunds and withdrawals
        address payerAuthorizer; // EOA that signs vouchers; address(0) = payer itself (EOA or ERC-1271)
        address receiver; // paid by `settle`
        address receiverAuthorizer; // signs claim batches and refunds; never zero
        address token; // ERC-20 held in escrow
        uint40 withdrawDelay; // seconds between initiateWithdraw and finalizeWithdraw (15 min .. 30 days)
        bytes32 salt; // distinguishes channels with otherwise identical parameters
    }

    /// @notice Per-channel totals. One storage slot.
    struct ChannelState {
        uint128 balance; // deposited - refunded - withdrawn
        uint128 totalClaimed; // cumulative claimed by the receiver side; never decreases
    }

    /// @notice A pending timed withdrawal. `initiatedAt == 0` is the single sentinel for "none pending".
    struct WithdrawalState {
        uint128 amount; // requested amount, capped at finalize time
        uint40 initiatedAt; // block timestamp of initiateWithdraw, 0 when none pending
    }

    /// @notice Claimed and settled totals per (receiver, token). One storage slot.
    struct ReceiverState {
        uint128 totalClaimed;
        uint128 totalSettled;
    }

    /// @notice What the payer signs: the channel and a cumulative ceiling.
    struct Voucher {
        ChannelConfig channel;
        uint128 maxClaimableAmount;
    }

    /// @notice One claim row: a signed voucher and the cumulative total the receiver side claims under it.
    struct VoucherClaim {
        Voucher voucher;
        bytes signature;
        uint128 totalClaimed;
    }

    // ---------------------------------------------------------------------------------------------
    // Events (names and fields match the x402 reference contract)
    // ---------------------------------------------------------------------------------------------

    /// @notice A channel received escrow while empty (first deposit, or re-funded after being drained).
    event ChannelCreated(bytes32 indexed channelId, ChannelConfig config);

    /// @notice Unclaimed escrow returned to zero on a channel that never had a claim.
    event ChannelClosed(bytes32 indexed channelId, ChannelConfig config);

    /// @notice `amount` entered the channel; `newBalance` is its balance afterwards.
    event Deposited(bytes32 indexed channelId, address indexed sender, uint128 amount, uint128 newBalance);

    /// @notice The receiver side raised the channel's cumulative claim by `claimAmount`.
    event Claimed(bytes32 indexed channelId, address indexed sender, uint128 claimAmount, uint128 newTotalClaimed);

    /// @notice `amount` of claimed funds was transferred to `receiver`.
    event Settled(address indexed receiver, address indexed token, address indexed sender, uint128 amount);

    /// @notice `amount` of unclaimed escrow was returned to the payer by the receiver side.
    event Refunded(bytes32 indexed channelId, address indexed sender, uint128 amount);

    /// @notice The payer side started a timed withdrawal that can be finalized at `finalizeAfter`.
    event WithdrawInitiated(bytes32 indexed channelId, uint128 amount, uint40 finalizeAfter);

    /// @notice A timed withdrawal completed and `amount` went to the payer.
    event WithdrawFinalized(bytes32 indexed channelId, address indexed sender, uint128 amount);

    // ---------------------------------------------------------------------------------------------
    // Errors (each carries the values involved)
    // ---------------------------------------------------------------------------------------------

    /// @notice A required address of the config is zero (payer, receiver, receiverAuthorizer, token).
    error BatchSettlementInvalidConfig(address payer, address receiver, address receiverAuthorizer, address token);
    /// @notice The config's withdraw delay is outside [min, max].
    error BatchSettlementWithdrawDelayOutOfRange(uint40 withdrawDelay, uint40 min, uint40 max);
    /// @notice A config word carries bits outside its ABI type (dirty calldata), so it has no canonical id.
    error BatchSettlementMalformedConfig();
    /// @notice Deposit of zero.
    error BatchSettlementZeroDeposit(bytes32 channelId);
    /// @notice Deposit through the zero address as collector.
    error BatchSettlementInvalidCollector(address collector);
    /// @notice The deposit would overflow the channel balance.
    error BatchSettlementDepositOverflow(bytes32 channelId, uint128 balance, uint128 amount);
    /// @notice The escrow's token balance did not grow by exactly `expected` (fee-on-transfer or failed pull).
    error BatchSettlementDepositNotReceived(address token, uint256 expected, uint256 received);
    /// @notice `claim` or `claimWithSignature` with no rows.
    error BatchSettlementEmptyBatch();
    /// @notice The caller is neither the receiver nor the receiverAuthorizer of the channel.
    error BatchSettlementNotReceiverSide(bytes32 channelId, address caller);
    /// @notice The caller is neither the payer nor the payerAuthorizer of the channel.
    error BatchSettlementNotPayerSide(bytes32 channelId, address caller);
    /// @notice A row of a signed batch names another receiverAuthorizer than the first row.
    error BatchSettlementMixedAuthorizer(uint256 index, address expected, address actual);
    /// @notice The receiverAuthorizer's signature over a claim batch or refund is invalid.
    error BatchSettlementInvalidAuthorizerSignature(address authorizer, bytes32 digest);
    /// @notice The payer-side signature over a voucher is invalid.
    error BatchSettlementInvalidVoucherSignature(bytes32 channelId, address signer);
    /// @notice The claimed total is above the voucher's signed ceiling.
    error BatchSettlementClaimExceedsCeiling(bytes32 channelId, uint128 totalClaimed, uint128 maxClaimableAmount);
    /// @notice The claimed total is above the channel balance.
    error BatchSettlementClaimExceedsBalance(bytes32 channelId, uint128 totalClaimed, uint128 balance);
    /// @notice Withdrawal request of zero.
    error BatchSettlementNothingToWithdraw(bytes32 channelId);
    /// @notice A withdrawal is already pending on the channel.
    error BatchSettlementWithdrawalPending(bytes32 channelId, uint40 initiatedAt);
    /// @notice No withdrawal is pending on the channel.
    error BatchSettlementWithdrawalNotPending(bytes32 channelId);
    /// @notice The withdraw delay has not elapsed yet.
    error BatchSettlementWithdrawDelayNotElapsed(bytes32 channelId, uint256 finalizeAfter, uint256 timestamp);
    /// @notice The withdrawal asks for more than the unclaimed escrow.
    error BatchSettlementWithdrawExceedsAvailable(bytes32 channelId, uint128 amount, uint128 available);
    /// @notice `refundWithSignature` with a nonce other than the channel's current one.
    error BatchSettlementInvalidRefundNonce(bytes32 channelId, uint256 expected, uint256 provided);
    /// @notice Refund of zero.
    error BatchSettlementZeroRefund(bytes32 channelId);

    // ---------------------------------------------------------------------------------------------
    // Deposits
    // ---------------------------------------------------------------------------------------------

    /// @notice Deposits `amount` into the channel of `config`, pulled by `collector`; creates the channel
    ///         on its first deposit.
    /// @dev Credits only what actually arrived: the escrow's token balance must grow by exactly `amount`,
    ///      so fee-on-transfer tokens are refused with `BatchSettlementDepositNotReceived`.
    /// @param config The channel configuration.
    /// @param amount Token units to deposit.
    /// @param collector An `IDepositCollector` that moves the tokens from the payer into this contract.
    /// @param collectorData Opaque bytes for the collector (authorization signatures and their parameters).
    function deposit(ChannelConfig calldata config, uint128 amount, address collector, bytes calldata collectorData)
        external;

    // ---------------------------------------------------------------------------------------------
    // Claims and settlement
    // ---------------------------------------------------------------------------------------------

    /// @notice Raises each row's channel `totalClaimed` to the row's `totalClaimed`. No tokens move.
    /// @dev The caller must be the receiver or receiverAuthorizer of every row. A row at or below the
    ///      channel's current `totalClaimed` is a no-op (so replays are harmless); above it, the row must
    ///      carry a valid payer-side voucher signature and stay within the voucher ceiling and the balance.
    /// @param voucherClaims The claim rows.
    function claim(VoucherClaim[] calldata voucherClaims) external;

    /// @notice Same as `claim`, relayed by anyone with the receiverAuthorizer's EIP-712 `ClaimBatch` signature.
    /// @param voucherClaims The claim rows; all must share the first row's receiverAuthorizer.
    /// @param authorizerSignature Signature of `getClaimBatchDigest(voucherClaims)` by that receiverAuthorizer.
    function claimWithSignature(VoucherClaim[] calldata voucherClaims, bytes calldata authorizerSignature) external;

    /// @notice Transfers everything claimed but not yet settled for (receiver, token) to `receiver`.
    /// @dev Permissionless. A no-op when nothing is pending.
    function settle(address receiver, address token) external;

    // ---------------------------------------------------------------------------------------------
    // Closing
    // ---------------------------------------------------------------------------------------------

    /// @notice Starts the timed withdrawal of `amount` of unclaimed escrow (payer or payerAuthorizer).
    /// @dev Receivers can still claim during the delay; claims reduce what finalize pays out.
    function initiateWithdraw(ChannelConfig calldata config, uint128 amount) external;

    /// @notice Completes a pending withdrawal after the delay, paying min(requested, unclaimed escrow).
    function finalizeWithdraw(ChannelConfig calldata config) external;

    /// @notice Cooperative refund by the receiver or receiverAuthorizer of up to `amount` unclaimed escrow.
    /// @dev The channel's refund nonce advances first, even when nothing is left to refund. A refund reduces a
    ///      pending withdrawal by the refunded amount, or cancels it when it covers the whole request.
    function refund(ChannelConfig calldata config, uint128 amount) external;

    /// @notice `refund` relayed by anyone with the receiverAuthorizer's EIP-712 `Refund` signature.
    /// @param nonce Must equal `refundNonce(channelId)`.
    function refundWithSignature(
        ChannelConfig calldata config,
        uint128 amount,
        uint256 nonce,
        bytes calldata receiverAuthorizerSignature
    ) external;

    // ---------------------------------------------------------------------------------------------
    // Views
    // ---------------------------------------------------------------------------------------------

    /// @notice The channel id: the EIP-712 hash of `config` under this contract's domain.
    function getChannelId(ChannelConfig calldata config) external view returns (bytes32);

    /// @notice EIP-712 digest of `Voucher(bytes32 channelId,uint128 maxClaimableAmount)`.
    function getVoucherDigest(bytes32 channelId, uint128 maxClaimableAmount) external view returns (bytes32);

    /// @notice EIP-712 digest of `Refund(bytes32 channelId,uint256 nonce,uint128 amount)`.
    function getRefundDigest(bytes32 channelId, uint256 nonce, uint128 amount) external view returns (bytes32);

    /// @notice EIP-712 digest of `ClaimBatch(ClaimEntry[] claims)` over the rows.
    function getClaimBatchDigest(VoucherClaim[] calldata voucherClaims) external view returns (bytes32);

    /// @notice Balance and cumulative claim of a channel.
    function channels(bytes32 channelId) external view returns (uint128 balance, uint128 totalClaimed);

    /// @notice The pending withdrawal of a channel (zeros when none).
    function pendingWithdrawals(bytes32 channelId) external view returns (uint128 amount, uint40 initiatedAt);

    /// @notice Claimed and settled totals of (receiver, token).
    function receivers(address receiver, address token)
        external
        view
        returns (uint128 totalClaimed, uint128 totalSettled);

    /// @notice The nonce the next `refundWithSignature` of the channel must carry.
    function refundNonce(bytes32 channelId) external view returns (uint256);
}
